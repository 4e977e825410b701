"""Registry-style docs for the provider, generated: ``docs/index.md``,
``docs/resources/<name>.md``, ``docs/data-sources/<name>.md`` (the layout the
Terraform Registry and tfplugindocs use), from the schema as
``terraform providers schema -json`` prints it plus the example files under
``examples/`` (``provider/provider.tf``, ``resources/<type>/resource.tf`` and
``import.sh``, ``data-sources/<type>/data-source.tf``).

    python -m cowfleet.provider.gen_docs                 # rewrite provider-shim/docs
    python -m cowfleet.provider.gen_docs --schema-json F  # from Terraform's own output
    python -m cowfleet.provider.gen_docs --out DIR        # somewhere else (the staleness test)

By default the schema is the provider's own (``schema.schema_json()``, the
same dict Terraform prints: tests/terraform/test_example.py compares them),
so regenerating needs no Terraform run. Written by hand rather than with
tfplugindocs, a Go tool (not on PyPI) that would also need the provider built
as a Go binary; the page layout follows its output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
EXAMPLES = HERE / "examples"
NAME = "cowfleet"


def type_name(t) -> str:
    """A cty JSON type as the docs show it: String, List of Object, Map of Number..."""
    if isinstance(t, str):
        return {"string": "String", "number": "Number", "bool": "Boolean", "dynamic": "Dynamic"}[t]
    kind, inner = t
    if kind == "object":
        return "Object"
    return f"{kind.capitalize()} of {type_name(inner)}"


def _object_of(t):
    """The object type inside an attribute's type (list of object, object), or None."""
    while isinstance(t, list):
        if t[0] == "object":
            return t[1]
        t = t[1]
    return None


def _anchor(path: list[str], kind: str) -> str:
    return f"nested{kind}--{'--'.join(path)}"


def _attr_line(name: str, a: dict, path: list[str], later: list) -> str:
    flags = [type_name(a["type"])] + (["Sensitive"] if a.get("sensitive") else [])
    line = f"- `{name}` ({', '.join(flags)})"
    if a.get("description"):
        line += f" {a['description'][0].upper()}{a['description'][1:]}"
        line += "" if line.endswith(".") else "."
    fields = _object_of(a["type"])
    if fields:
        anchor = _anchor(path + [name], "att")
        line += f" (see [below for nested schema](#{anchor}))"
        later.append(("att", path + [name], fields))
    return line


def _block_line(name: str, nb: dict, path: list[str], later: list) -> str:
    limits = ", ".join(f"{k.replace('_', ' ')}: {nb[k]}" for k in ("min_items", "max_items") if nb.get(k))
    kind = "Block" if nb["nesting_mode"] == "single" else f"Block {nb['nesting_mode'].capitalize()}"
    line = f"- `{name}` ({kind}{', ' + limits if limits else ''})"
    desc = nb["block"].get("description")
    if desc:
        line += f" {desc}"
    anchor = _anchor(path + [name], "block")
    later.append(("block", path + [name], nb["block"]))
    return line + f" (see [below for nested schema](#{anchor}))"


def _groups(block: dict, path: list[str], later: list) -> list[tuple[str, list[str]]]:
    """(heading, lines) for Required, Optional, Read-Only, in name order."""
    required, optional, readonly = [], [], []
    for name, a in sorted((block.get("attributes") or {}).items()):
        line = _attr_line(name, a, path, later)
        (required if a.get("required") else optional if a.get("optional") else readonly).append(line)
    for name, nb in sorted((block.get("block_types") or {}).items()):
        (required if nb.get("min_items") else optional).append(_block_line(name, nb, path, later))
    return [(h, lines) for h, lines in (("Required", required), ("Optional", optional),
                                        ("Read-Only", readonly)) if lines]


def schema_md(block: dict) -> str:
    """The ``## Schema`` section: top-level groups, then each nested block and object."""
    later: list = []
    out = ["## Schema", ""]
    for heading, lines in _groups(block, [], later):
        out += [f"### {heading}", "", *lines, ""]
    while later:
        kind, path, inner = later.pop(0)
        out += [f'<a id="{_anchor(path, kind)}"></a>', f"### Nested Schema for `{'.'.join(path)}`", ""]
        if kind == "block":
            for heading, lines in _groups(inner, path, later):
                out += [f"{heading}:", "", *lines, ""]
        else:                       # an object attribute's fields: as computed as the attribute
            sub: list = []
            lines = [_attr_line(n, {"type": t}, path, sub) for n, t in sorted(inner.items())]
            later = sub + later
            out += ["Read-Only:", "", *lines, ""]
    return "\n".join(out)


def _example(path: Path, lang: str, title: str) -> list[str]:
    if not path.is_file():
        return []
    return [f"## {title}", "", f"```{lang}", path.read_text().rstrip("\n"), "```", ""]


def _front(title: str, description: str) -> list[str]:
    desc = "\n".join("  " + line for line in description.splitlines()) or "  "
    return ["---", f'page_title: "{title}"', 'subcategory: ""', "description: |-", desc, "---", ""]


def page(kind: str, name: str, schema: dict, examples: Path) -> str:
    block = schema["block"]
    desc = block.get("description", "")
    label = {"resource": "Resource", "data-source": "Data Source"}[kind]
    out = _front(f"{name} {label} - {NAME}", desc) + [f"# {name} ({label})", "", desc, ""]
    sub = examples / ("resources" if kind == "resource" else "data-sources") / name
    out += _example(sub / f"{kind}.tf", "terraform", "Example Usage")
    out += [schema_md(block)]
    imp = sub / "import.sh"
    if kind == "resource" and imp.is_file():
        out += ["## Import", "", "Import is supported using the following syntax:", ""]
        out += _example(imp, "shell", "")[2:]
    return "\n".join(out).rstrip("\n") + "\n"


def index(schema: dict, examples: Path) -> str:
    block = schema["block"]
    desc = block.get("description", "")
    out = _front(f"{NAME} Provider", desc) + [f"# {NAME} Provider", "", desc, ""]
    out += _example(examples / "provider" / "provider.tf", "terraform", "Example Usage")
    out += [schema_md(block)]
    return "\n".join(out).rstrip("\n") + "\n"


def generate(schema_json: dict, out: Path, examples: Path = EXAMPLES) -> list[Path]:
    """Write every page under ``out``; returns the files written."""
    (provider,) = schema_json["provider_schemas"].values()
    pages = {out / "index.md": index(provider["provider"], examples)}
    for name, s in provider.get("resource_schemas", {}).items():
        pages[out / "resources" / f"{name.removeprefix(NAME + '_')}.md"] = page("resource", name, s, examples)
    for name, s in provider.get("data_source_schemas", {}).items():
        pages[out / "data-sources" / f"{name.removeprefix(NAME + '_')}.md"] = page("data-source", name, s, examples)
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(pages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gen_docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--schema-json", help="`terraform providers schema -json` output (- for stdin); "
                                          "default: the provider's own schema")
    ap.add_argument("--out", default=str(DOCS), help="folder to write (default: provider-shim/docs)")
    args = ap.parse_args(argv)
    if args.schema_json:
        data = json.load(sys.stdin if args.schema_json == "-" else open(args.schema_json))
    else:
        from cowfleet.provider.schema import schema_json
        data = schema_json()
    for path in generate(data, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
