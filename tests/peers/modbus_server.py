#!/usr/bin/env python3
"""A Modbus server (pymodbus) serving the values a test gives it: the independent peer of the
agent's Modbus source in tests/tests/ingest_modbus.rs.

    modbus_server.py --values values.json --tcp 127.0.0.1:5020
    modbus_server.py --values values.json --serial /dev/pts/7 [--baud 19200 --parity E --stop-bits 1]

values.json:

    {"holding":  [{"address": 100, "type": "f32", "value": 21.5, "word_order": "little"}, ...],
     "input":    [{"address": 0, "type": "i32", "value": -7, "byte_order": "little"}, ...],
     "coils":    [{"address": 3, "value": true}, ...],
     "discrete": [...]}

Types are the agent's names (u16 i16 u32 i32 u64 f32 f64); pymodbus turns each value into
registers (`convert_to_registers`, with its own word order); byte_order "little" then swaps the
two bytes of each register. So the encoding under test is pymodbus's, not the agent's.
Addresses between served ones read as 0 (registers) or false (bits); addresses outside answer
with an exception (illegal data address).

With --counter ADDRESS, holding register ADDRESS counts up once every --counter-ms
milliseconds (u16, wrapping), starting at 0 when the server starts; each change is appended to
--counter-log as "unix_ms value" lines, flushed, so a test can tell which value was served when.

Prints "READY" on stdout once it listens; runs until killed.
"""

import argparse
import asyncio
import json
import sys
import time

from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

DATATYPE = ModbusTcpClient.DATATYPE
TYPES = {
    "u16": DATATYPE.UINT16,
    "i16": DATATYPE.INT16,
    "u32": DATATYPE.UINT32,
    "i32": DATATYPE.INT32,
    "u64": DATATYPE.UINT64,
    "f32": DATATYPE.FLOAT32,
    "f64": DATATYPE.FLOAT64,
}
# Far from anything a test reads: a table needs one block even when the test serves nothing in it.
UNUSED = 60000


def words_of(entry):
    """The registers of one value, in address order."""
    kind = TYPES[entry["type"]]
    value = entry["value"]
    if kind not in (DATATYPE.FLOAT32, DATATYPE.FLOAT64):
        value = int(value)
    words = ModbusTcpClient.convert_to_registers(
        value, kind, word_order=entry.get("word_order", "big")
    )
    if entry.get("byte_order", "big") == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def runs(cells):
    """Contiguous runs of {address: value}: [(first address, [values])], gaps filled later."""
    out = []
    for address in sorted(cells):
        if out and out[-1][0] + len(out[-1][1]) == address:
            out[-1][1].append(cells[address])
        else:
            out.append((address, [cells[address]]))
    return out


def fill(cells, zero):
    """Fills the gaps between served addresses, so a block over them reads zeros."""
    if cells:
        for address in range(min(cells), max(cells) + 1):
            cells.setdefault(address, zero)
    return cells


def register_table(entries):
    cells = {}
    for entry in entries:
        for i, word in enumerate(words_of(entry)):
            cells[entry["address"] + i] = word
    blocks = [
        SimData(address=a, values=v, datatype=DataType.REGISTERS)
        for a, v in runs(fill(cells, 0))
    ]
    return blocks or [SimData(address=UNUSED, values=[0], datatype=DataType.REGISTERS)]


def bit_table(entries):
    cells = {entry["address"]: bool(entry["value"]) for entry in entries}
    blocks = [
        SimData(address=a, values=v, datatype=DataType.BITS)
        for a, v in runs(fill(cells, False))
    ]
    return blocks or [SimData(address=UNUSED, values=[False], datatype=DataType.BITS)]


async def count(server, device_id, address, every_ms, log_path):
    """Holding register `address` := 0, 1, 2, ... every `every_ms`, each change logged first."""
    value = 0
    with open(log_path, "a", encoding="utf-8") as log:
        while True:
            log.write(f"{int(time.time() * 1000)} {value}\n")
            log.flush()
            await server.async_setValues(device_id, 6, address, [value])
            await asyncio.sleep(every_ms / 1000)
            value = (value + 1) % 65536


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", required=True)
    parser.add_argument("--tcp")
    parser.add_argument("--serial")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--parity", default="E")
    parser.add_argument("--stop-bits", type=int, default=1)
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--counter", type=int)
    parser.add_argument("--counter-ms", type=int, default=100)
    parser.add_argument("--counter-log")
    args = parser.parse_args()
    with open(args.values, encoding="utf-8") as f:
        values = json.load(f)
    holding = values.get("holding", [])
    if args.counter is not None:
        holding = holding + [{"address": args.counter, "type": "u16", "value": 0}]
    device = SimDevice(
        id=args.unit,
        simdata=(
            bit_table(values.get("coils", [])),
            bit_table(values.get("discrete", [])),
            register_table(holding),
            register_table(values.get("input", [])),
        ),
    )
    if args.tcp:
        host, port = args.tcp.rsplit(":", 1)
        server = ModbusTcpServer(device, address=(host, int(port)))
    elif args.serial:
        server = ModbusSerialServer(
            device,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            stopbits=args.stop_bits,
        )
    else:
        sys.exit("one of --tcp and --serial is needed")
    await server.serve_forever(background=True)
    print("READY", flush=True)
    if args.counter is not None:
        await count(server, args.unit, args.counter, args.counter_ms, args.counter_log)
    else:
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
