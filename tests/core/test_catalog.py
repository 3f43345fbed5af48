from pathlib import Path

import pytest
import yaml

from vora_core.catalog import load_catalog, parse_catalog
from vora_core.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]


def minimal(**extra):
    return {"name": "t", "workdir": "runs/t", "sources": {"s": {"kind": "synthetic_shapes", "n": 4}}, **extra}


@pytest.mark.parametrize("name", ["demo.yaml", "vora-7b.yaml"])
def test_shipped_catalogs_validate(name):
    catalog = load_catalog(ROOT / "catalogs" / name)
    assert catalog.name == name.removesuffix(".yaml")


def test_paper_recipe_values():
    catalog = load_catalog(ROOT / "catalogs" / "vora-7b.yaml")
    assert catalog.download.image_size == 448
    assert catalog.sources["datacomp"].min_longer_edge == 448
    assert catalog.sources["gldv2"].kind == "gldv2"


def test_paper_recipe_reads_each_dataset_like_the_real_schema_catalog():
    """catalogs/real-schemas.yaml is run over the published schemas (tests/realdata/test_corpus.py): the
    paper's recipe must read every dataset the two share with the same keys (Magpie-Pro's `uuid`,
    MathQA's `options`, ...)."""
    recipe = load_catalog(ROOT / "catalogs" / "vora-7b.yaml")
    checked = load_catalog(ROOT / "catalogs" / "real-schemas.yaml")
    shared = sorted(set(recipe.text_sources) & set(checked.text_sources))
    assert shared == ["dolly", "infinity_instruct", "llava_665k", "magpie_pro", "mathinstruct", "mathqa",
                      "opencodeinterpreter", "openorca", "orca_math", "smoltalk"]
    for name in shared:
        assert recipe.text_sources[name] == checked.text_sources[name], name
    assert recipe.text_sources["magpie_pro"].id_col == "uuid"
    assert recipe.text_sources["mathqa"].context_col == "options"
    for name in ("datacomp", "gldv2"):  # (the recipe sets no clean_csv)
        assert recipe.sources[name].model_dump(exclude={"clean_csv"}) == checked.sources[name].model_dump(
            exclude={"clean_csv"}), name


def test_defaults_filled():
    catalog = parse_catalog(minimal())
    assert catalog.download.resize_mode == "keep_ratio_largest"
    assert catalog.download.encode_format == "jpg"
    assert catalog.download.retries == 2
    assert catalog.seed == 0


def test_errors_name_file_path_value_and_expectation(tmp_path):
    bad = minimal(download={"image_size": "big", "encode_formt": "jpg"})
    bad["sources"]["u"] = {"kind": "url_list"}
    bad["sources"]["x"] = {"kind": "ftp"}
    bad["sources"]["s"]["n"] = -3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    assert str(e.value) == (
        f"{path}: invalid catalog:\n"
        "  sources.s.n: Input should be greater than 0 (got -3)\n"
        "  sources.u.path: required key is missing (add it)\n"
        "  sources.x: unknown kind 'ftp'; expected one of 'synthetic_shapes', 'url_list', 'datacomp', "
        "'gldv2', 'parquet_images'\n"
        "  download.image_size: Input should be a valid integer, unable to parse string as an integer "
        "(got 'big')\n"
        "  download.encode_formt: unknown key (remove it or check its spelling)"
    )


def test_cross_field_rule_message():
    with pytest.raises(CatalogError, match=r"download: rows_per_unit \(150\) must be a multiple of "
                       r"number_sample_per_shard \(100\)"):
        parse_catalog(minimal(download={"rows_per_unit": 150, "number_sample_per_shard": 100}))


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(CatalogError, match="nope.yaml: catalog file not found"):
        load_catalog(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(CatalogError, match="broken.yaml: not valid YAML"):
        load_catalog(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(CatalogError, match="expected a mapping at the top level, got str"):
        load_catalog(scalar)


def test_lock_file_holds_resolved_catalog(tmp_path):
    catalog = parse_catalog(minimal(workdir=str(tmp_path / "run")))
    lock = catalog.write_lock()
    assert lock == tmp_path / "run" / "catalog.lock.yaml"
    resolved = yaml.safe_load(lock.read_text())
    assert resolved["download"]["resize_mode"] == "keep_ratio_largest"
    assert parse_catalog(resolved) == catalog


def test_fingerprint_depends_only_on_given_settings():
    a = parse_catalog(minimal())
    b = parse_catalog(minimal(seed=7))
    c = parse_catalog(minimal(download={"image_size": 224}))
    assert a.settings_fingerprint(a.download) == b.settings_fingerprint(b.download)
    assert a.settings_fingerprint(a.download) != c.settings_fingerprint(c.download)
