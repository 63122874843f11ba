"""`export --target vllm --deploy NAME,...`: the files each serving engine past one machine runs.

    ENGINES["kserve"].render(Deployment(serve_config, weight_bytes, export_bytes))
        -> {"deploy/kserve/inferenceservice.yaml": "..."}

One module per engine, each a `render(Deployment) -> {path: text}` registered here by the name users
type. Every renderer reads the same `Deployment` — the layout `plan` computed (TP x PP, nodes, GPUs
per node), the memory the sized model needs, the served adapters and the serving features of the
export's vllm-config.yaml — so the engines serve what the export's own launch.sh serves. The tests
check every object against the engine's published schema (tests/data/schemas/).
"""

from __future__ import annotations

from ...errors import UnknownName
from . import kserve, llmd, lws, production_stack, ray_serve, sglang
from .base import DEPLOY_DIR, Deployment, Engine

ENGINES: dict[str, Engine] = {e.name: e for e in (kserve.ENGINE, llmd.ENGINE, lws.ENGINE, production_stack.ENGINE,
                                                  ray_serve.ENGINE, sglang.ENGINE)}


def deploy_names(text: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The engines a comma-separated --deploy names, in registry order; an unknown one lists the valid ones."""
    if not text:
        return ()
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for name in names:
        if name not in ENGINES:
            raise UnknownName("--deploy engine", name, tuple(ENGINES))
    return tuple(n for n in ENGINES if n in names)


def check(names: tuple[str, ...], deployment: Deployment) -> None:
    """Refuse, in one line, a layout or option an engine in `names` cannot serve."""
    for name in names:
        if ENGINES[name].check is not None:
            ENGINES[name].check(deployment)


def render(names: tuple[str, ...], deployment: Deployment) -> dict[str, str]:
    """Relative path -> text of every file the engines in `names` write."""
    files: dict[str, str] = {}
    for name in names:
        files.update(ENGINES[name].render(deployment))
    return files


__all__ = ["DEPLOY_DIR", "ENGINES", "Deployment", "Engine", "check", "deploy_names", "render"]
