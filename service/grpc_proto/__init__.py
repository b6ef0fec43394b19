"""The KServe V2 gRPC messages (kserve_v2.proto), compiled by ./scripts/gen-grpc and committed:
serving needs only the protobuf runtime, not the compiler."""
