"""The runtime protocol on the wire: protobuf's format read and written by hand (codec), tensors, chunked
streams, and one encoder and decoder per bulk message (messages). Only this package and the gRPC service layers
know the wire format; the domain (runtime.protocol, runtime.rows) never imports it."""
