# One cachegrid node (or the admin CLI): `docker compose up` builds it (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
EXPOSE 8080
ENTRYPOINT ["cachegrid"]
CMD ["node"]
