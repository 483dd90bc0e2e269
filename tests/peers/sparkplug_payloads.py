#!/usr/bin/env python3
"""Builds Sparkplug B payloads with Google's protobuf, from the agent's checked-in .proto.

The independent producer of the Sparkplug B suite (tests/tests/ingest_sparkplug.rs): the
.proto (agent/proto/sparkplug_b.proto, Eclipse Tahu) is compiled here by protoc from
grpcio-tools and the messages are serialised by the `protobuf` package, so nothing of the
agent's own decoder takes part in making them. Runs in the virtualenv scripts/install-deps.sh
makes ($EDGE_CACHE/sparkplug-py-<version>).

stdin: a JSON list of messages
    {"topic": "...", "timestamp": ms, "seq": n,
     "metrics": [{"name": str?, "alias": int?, "datatype": str?, "timestamp": ms?, "value": x?}]}
where `datatype` is a DataType name ("Int32", "Double", ...) and `value` is set into the oneof
member the Sparkplug B specification gives that type (signed integers as two's complement).
stdout: one line per message, `<topic> <payload as hex>`, in order.
"""

import json
import sys
import tempfile
from pathlib import Path

import importlib.resources

from grpc_tools import protoc

PROTO = Path(__file__).resolve().parents[2] / "agent" / "proto" / "sparkplug_b.proto"

INT = {"Int8": 8, "Int16": 16, "Int32": 32, "UInt8": 0, "UInt16": 0, "UInt32": 0}
LONG = {"Int64": 64, "UInt64": 0, "DateTime": 0}


def compile_proto(out: str):
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={out}", PROTO.name]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {PROTO}")
    sys.path.insert(0, out)
    import sparkplug_b_pb2  # noqa: E402 (generated just above)

    return sparkplug_b_pb2


def fill(pb, metric, spec):
    if "name" in spec:
        metric.name = spec["name"]
    if "alias" in spec:
        metric.alias = spec["alias"]
    if "timestamp" in spec:
        metric.timestamp = spec["timestamp"]
    dt = spec.get("datatype")
    if dt is not None:
        metric.datatype = pb.DataType.Value(dt)
    if "value" not in spec:
        return
    value = spec["value"]
    # Data messages by alias usually carry no datatype: the test says which member to set.
    kind = spec.get("as", dt)
    if kind in INT:
        metric.int_value = value % (1 << 32)
    elif kind in LONG:
        metric.long_value = value % (1 << 64)
    elif kind == "Float":
        metric.float_value = value
    elif kind == "Double":
        metric.double_value = value
    elif kind == "Boolean":
        metric.boolean_value = bool(value)
    elif kind in ("String", "Text"):
        metric.string_value = value
    else:
        sys.exit(f"no oneof member for {kind!r}")


def main():
    messages = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as out:
        pb = compile_proto(out)
        for m in messages:
            payload = pb.Payload()
            if "timestamp" in m:
                payload.timestamp = m["timestamp"]
            if "seq" in m:
                payload.seq = m["seq"]
            for spec in m.get("metrics", []):
                fill(pb, payload.metrics.add(), spec)
            print(m["topic"], payload.SerializeToString().hex(), flush=True)


if __name__ == "__main__":
    main()
