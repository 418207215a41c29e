"""The parameter server's insides: the state machine (domain objects in, domain objects out), the parameters of
one shard, how pushes are combined, checkpoints, how parameters are sharded, and the gRPC service."""
