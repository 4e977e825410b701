"""The provider's registry-style docs (provider-shim/docs) are what
provider-shim/gen_docs.py makes from the schema and the example files now:
a schema or example change without `make provider-docs` fails here."""
from __future__ import annotations

from pathlib import Path

from cowfleet.provider import gen_docs
from cowfleet.provider import schema as S


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_docs_are_up_to_date(tmp_path):
    gen_docs.generate(S.schema_json(), tmp_path)
    fresh, committed = _tree(tmp_path), _tree(gen_docs.DOCS)
    assert sorted(committed) == sorted(fresh), "docs pages differ: run `make provider-docs`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale docs {stale}: run `make provider-docs`"
    assert sorted(fresh) == ["data-sources/image.md", "data-sources/nodes.md", "index.md",
                             "resources/flavor.md", "resources/image.md", "resources/instance_group.md"]


def test_every_attribute_block_resource_and_data_source_is_described():
    def undescribed(block: S.Block, where: str) -> list[str]:
        out = [] if block.description else [where]
        out += [f"{where}.{n}" for n, a in block.attrs.items() if not a.description]
        for n, nb in block.blocks.items():
            out += undescribed(nb.block, f"{where}.{n}")
        return out
    missing = undescribed(S.PROVIDER, "provider")
    for name, block in {**S.RESOURCES, **{f"data.{k}": b for k, b in S.DATA_SOURCES.items()}}.items():
        missing += undescribed(block, name)
    assert missing == []


def test_pages_show_types_examples_nested_schemas_and_import():
    page = (gen_docs.DOCS / "resources" / "instance_group.md").read_text()
    assert page.startswith("---\npage_title: \"cowfleet_instance_group Resource - cowfleet\"")
    assert "## Example Usage\n\n```terraform\nresource \"cowfleet_instance_group\" \"web\"" in page
    assert "- `size` (Number) Number of instances" in page
    assert "- `instances` (List of Object)" in page and '<a id="nestedatt--instances"></a>' in page
    assert "- `placement` (Block)" in page and "### Nested Schema for `placement`" in page
    assert "terraform import cowfleet_instance_group.web web" in page
    index = (gen_docs.DOCS / "index.md").read_text()
    assert "- `token` (String, Sensitive)" in index
