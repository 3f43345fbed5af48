"""Register model_type "vora" with transformers' Auto classes, without making `import vora_core` slow.

Importing transformers + torch + peft costs seconds, and the CLI imports `vora_core` on every
call. So: if transformers' auto modules are already loaded, register now; otherwise a meta-path
hook registers right after transformers loads them (the config class when
`configuration_auto` is loaded, the model class when `modeling_auto` is). Either way
`AutoConfig` / `AutoModelForCausalLM.from_pretrained(dir)` know "vora" before first use.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_MODEL_MODULE = "transformers.models.auto.modeling_auto"


def _importing(module: str, name: str) -> bool:
    """True while `module` is half-imported (it then registers itself when it finishes)."""
    loaded = sys.modules.get(module)
    return loaded is not None and not hasattr(loaded, name)


def register_config() -> None:
    if _importing("vora_core.model.config", "VoRAConfig"):
        return
    from transformers.models.auto.configuration_auto import AutoConfig

    from vora_core.model.config import VoRAConfig

    AutoConfig.register("vora", VoRAConfig, exist_ok=True)


def register_model() -> None:
    if _importing("vora_core.model.config", "VoRAConfig") or _importing("vora_core.model.modeling", "VoRAForCausalLM"):
        return
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    from vora_core.model.config import VoRAConfig
    from vora_core.model.modeling import VoRAForCausalLM

    register_config()
    AutoModelForCausalLM.register(VoRAConfig, VoRAForCausalLM, exist_ok=True)


_ACTIONS = {_CONFIG_MODULE: register_config, _MODEL_MODULE: register_model}


class _AfterLoad(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, action) -> None:
        self.loader = loader
        self.action = action

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.action()


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path, target=None):
        action = _ACTIONS.get(fullname)
        if action is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _AfterLoad(spec.loader, action)
                return spec
        return None


def install() -> None:
    """Register now if transformers' auto modules are loaded, else when they get loaded."""
    if _MODEL_MODULE in sys.modules:
        register_model()
    elif _CONFIG_MODULE in sys.modules:
        register_config()
    if _MODEL_MODULE not in sys.modules and not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


install()
