"""Protobuf messages this runtime sends (generated from the .proto files beside them)."""
