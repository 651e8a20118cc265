"""The HTTP header names and media type of cachegrid's contract (DESIGN.md §7), in one place.

Owns: names only; no behaviour. Shared by the serving layer (which builds forwarded and
batched answers as bytes), the HTTP layer and the client.
"""

JSON = "application/json"
NODE_HEADER = "X-Cachegrid-Node"  # the owner that served the key
EPOCH_HEADER = "X-Cachegrid-Epoch"  # the forwarding node's ring epoch
HOPS_HEADER = "X-Cachegrid-Hops"  # how many times a request was forwarded
REPLICA_HEADER = "X-Cachegrid-Replica"  # the node that answered from its read-lease copy
