#!/usr/bin/env python3
"""Checks docs/webhook.schema.json with an independent JSON Schema validator (jsonschema).

The schema must be a valid 2020-12 schema, its examples and the webhook channel's sample
payloads must pass it, and calls the channel refuses for missing fields must fail it.
Exits non-zero with the reasons otherwise. Run by ingest's webhook tests when
CRM_PEERS_PYTHON is set.
"""
import json
import pathlib
import sys

import jsonschema

ROOT = pathlib.Path(__file__).resolve().parents[2]
schema = json.loads((ROOT / "docs/webhook.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
problems = []
samples = sorted((ROOT / "ingest/src/channels/testdata/webhook").glob("*.json"))
for doc, name in [(ex, "example %d" % i) for i, ex in enumerate(schema.get("examples", []))] + [
    (json.loads(p.read_text()), p.name) for p in samples
]:
    for error in validator.iter_errors(doc):
        problems.append("%s: %s" % (name, error.message))
for bad in [
    {"type": "track", "messageId": "m", "userId": "u"},
    {"type": "identify", "messageId": "m"},
    {"type": "identify", "userId": "u"},
    {"type": "page", "messageId": "m", "userId": "u"},
    {"batch": []},
]:
    if validator.is_valid(bad):
        problems.append("schema accepts a call the channel refuses: %s" % json.dumps(bad))
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("webhook schema ok: %d samples" % len(samples))
