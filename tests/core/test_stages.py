import pytest

from vora_core.errors import CatalogError
from vora_core.stages import NAMES as STAGES
from vora_core.stages import select_stages


def test_selection():
    assert select_stages(STAGES) == list(STAGES)
    assert select_stages(STAGES, from_="mix") == ["mix", "pretrain", "merge", "finetune", "evaluate"]
    assert select_stages(STAGES, until="recaption") == ["download", "recaption"]
    assert select_stages(STAGES, from_="mix", until="merge") == ["mix", "pretrain", "merge"]
    assert select_stages(STAGES, only=["evaluate", "download"]) == ["download", "evaluate"]
    assert select_stages(["download", "recaption"], from_="recaption") == ["recaption"]


def test_selection_errors():
    with pytest.raises(CatalogError, match="unknown stage 'train'; stages are: download, recaption, mix"):
        select_stages(STAGES, only=["train"])
    with pytest.raises(CatalogError, match="use either --only or --from/--until, not both"):
        select_stages(STAGES, only=["mix"], from_="download")
    with pytest.raises(CatalogError, match="--from merge comes after --until mix"):
        select_stages(STAGES, from_="merge", until="mix")
    with pytest.raises(CatalogError, match="stage\\(s\\) evaluate not available in this build"):
        select_stages(["download"], only=["evaluate"])
