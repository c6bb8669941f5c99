#!/usr/bin/env python3
"""Writes a copy of musicgw.proto with each RPC annotated `option (google.api.http)` from
http_rules.yaml. Fails when an RPC has no rule or a rule names no RPC.

  annotate_proto.py RULES_YAML IN_PROTO OUT_PROTO
"""
import re
import sys

import yaml

PATTERNS = ("get", "put", "post", "delete", "patch")
RPC = re.compile(r"^(\s*)rpc\s+(\w+)\s*\(([^)]*)\)\s*returns\s*\(([^)]*)\)\s*;", re.M)


def option_text(rule, indent):
    fields = [f'{k}: "{rule[k]}"' for k in PATTERNS + ("body", "response_body") if k in rule]
    return f"{indent}  option (google.api.http) = {{{' '.join(fields)}}};\n"


def main(rules_path, in_path, out_path):
    with open(rules_path) as f:
        rules = {r["selector"]: r for r in yaml.safe_load(f)["http"]["rules"]}
    with open(in_path) as f:
        text = f.read()
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M).group(1)
    service = re.search(r"^service\s+(\w+)", text, re.M).group(1)
    used = set()

    def annotate(match):
        indent, method = match.group(1), match.group(2)
        selector = f"{package}.{service}.{method}"
        if selector not in rules:
            sys.exit(f"annotate_proto: no HTTP rule for {selector}")
        if sum(k in rules[selector] for k in PATTERNS) != 1:
            sys.exit(f"annotate_proto: {selector} needs exactly one of {PATTERNS}")
        used.add(selector)
        head = match.group(0)[:-1].rstrip()  # without the ';'
        return f"{head} {{\n{option_text(rules[selector], indent)}{indent}}}"

    text = RPC.sub(annotate, text)
    unused = set(rules) - used
    if unused:
        sys.exit(f"annotate_proto: rules for unknown methods {sorted(unused)}")
    text = re.sub(r'^(import "google/protobuf/duration.proto";)',
                  r'import "google/api/annotations.proto";\n\1', text, count=1, flags=re.M)
    with open(out_path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(*sys.argv[1:4])
