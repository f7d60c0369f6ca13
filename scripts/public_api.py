#!/usr/bin/env python3
"""Lists the public API of a crate from its rustdoc JSON, one item a line.

    public_api.py CRATE.json            the listing, on stdout
    public_api.py CRATE.json --summary  plus the root names and any item
                                        reachable by more than one path

Each line is `kind path`: modules, types, functions, constants, traits,
enum variants, public struct fields, and the public methods and
associated items of inherent impls (trait impls are left out: they follow
from the types). Items are listed under every public path that reaches
them, so a second path to one item shows up as a second line.
"""
import json
import sys
from collections import defaultdict

KINDS = {
    "module": "mod",
    "struct": "struct",
    "enum": "enum",
    "function": "fn",
    "trait": "trait",
    "constant": "const",
    "static": "static",
    "type_alias": "type",
    "macro": "macro",
    "union": "union",
    "variant": "variant",
    "struct_field": "field",
    "assoc_const": "const",
    "assoc_type": "type",
}


def main():
    doc = json.load(open(sys.argv[1]))
    index = doc["index"]
    lines = []
    paths_of = defaultdict(list)
    root = index[str(doc["root"])]
    crate = root["name"]

    def item(i):
        return index.get(str(i))

    def kind_of(it):
        (k,) = it["inner"].keys()
        return k

    def emit(it, path):
        kind = kind_of(it)
        lines.append(f"{KINDS.get(kind, kind)} {path}")
        paths_of[it["id"]].append(path)
        inner = it["inner"][kind]
        if kind == "module":
            walk_module(inner, path)
        elif kind == "struct":
            fields = inner["kind"]
            if isinstance(fields, dict) and "plain" in fields:
                for f in fields["plain"]["fields"]:
                    fi = item(f)
                    if fi and fi["visibility"] == "public":
                        emit(fi, f"{path}::{fi['name']}")
            elif isinstance(fields, dict) and "tuple" in fields:
                for n, f in enumerate(fields["tuple"]):
                    fi = item(f) if f is not None else None
                    if fi and fi["visibility"] == "public":
                        lines.append(f"field {path}::{n}")
            impls(inner["impls"], path)
        elif kind == "enum":
            for v in inner["variants"]:
                emit(item(v), f"{path}::{item(v)['name']}")
            impls(inner["impls"], path)
        elif kind == "trait":
            for m in inner["items"]:
                mi = item(m)
                emit(mi, f"{path}::{mi['name']}")

    def impls(ids, path):
        for i in ids:
            imp = item(i)
            if imp is None:
                continue
            body = imp["inner"]["impl"]
            if body["trait"] is not None or body.get("is_synthetic") or body.get("blanket_impl"):
                continue
            for m in body["items"]:
                mi = item(m)
                if mi and mi["visibility"] == "public":
                    emit(mi, f"{path}::{mi['name']}")

    def walk_module(module, path):
        for i in module["items"]:
            it = item(i)
            if it is None or it["visibility"] != "public":
                continue
            if kind_of(it) == "use":
                use = it["inner"]["use"]
                target = item(use["id"]) if use["id"] is not None else None
                name = use["name"]
                if target is None:
                    lines.append(f"use {path}::{name} = {use['source']}")
                    continue
                if use["is_glob"]:
                    walk_module(target["inner"]["module"], path)
                    continue
                emit(target, f"{path}::{name}")
            else:
                emit(it, f"{path}::{it['name']}")

    walk_module(root["inner"]["module"], crate)
    for line in sorted(set(lines)):
        print(line)
    if "--summary" in sys.argv:
        roots = sorted(
            {l.split(" ", 1)[1].split("::")[1] for l in lines if l.count("::") == 1}
        )
        print(f"# {len(roots)} names at the root: {' '.join(roots)}", file=sys.stderr)
        for paths in paths_of.values():
            if len(set(paths)) > 1:
                print(f"# more than one path: {' '.join(sorted(set(paths)))}", file=sys.stderr)


if __name__ == "__main__":
    main()
