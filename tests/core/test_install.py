"""The install breakages `make setup` handles, each proved fixed (README: "Install notes")."""

import importlib.metadata as md
import sysconfig
from pathlib import Path

import pytest


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in md.version(name).split(".")[:3] if p.isdigit())


def test_dataclasses_is_the_standard_library():
    # img2dataset pulls the Python 3.6 `dataclasses` backport; it shadows the stdlib and Prefect's
    # server dies at start ("dataclass() got an unexpected keyword argument 'slots'").
    import dataclasses

    assert Path(dataclasses.__file__).parent == Path(sysconfig.get_paths()["stdlib"])
    with pytest.raises(md.PackageNotFoundError):
        md.distribution("dataclasses")


def test_pinned_versions_that_work_together():
    # fastapi >= 0.155 breaks Prefect 3.8's server (Body(min_items=...)); >= 0.151 answers 422 to the
    # `"limit": null` that Prefect's own client sends (workers, artifacts, ... filters).
    assert _version("fastapi") < (0, 151)
    assert (3, 8) <= _version("prefect") < (3, 9)  # 3.9.1 is not installable from the reachable index
    assert _version("webdataset") < (0, 3)  # img2dataset pins webdataset<0.3
    assert (5, 20) <= _version("transformers") < (5, 21)  # vLLM accepts < 5.21; 5.17 lacks SubConfigSpec


def test_the_ray_extra_installs_beside_prefect():
    # `make setup` installs `.[dev,ray]`: Ray and prefect-ray leave the Prefect/fastapi pins above intact.
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    assert _version("ray")[:2] == (2, 60)
    assert callable(remote_options) and RayTaskRunner().address is None


def test_img2dataset_and_webdataset_import_together():
    import img2dataset
    import webdataset

    assert callable(img2dataset.download)
    assert hasattr(webdataset, "TarWriter")


@pytest.mark.slow
def test_prefect_server_starts_and_answers(prefect_harness):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.api_healthcheck() is None  # None means healthy
        # sends "limit": null, which fastapi >= 0.151 rejects with a 422
        assert isinstance(client.read_artifacts(), list)
