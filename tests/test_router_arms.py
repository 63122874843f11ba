"""Arms and the sticky weighted assignment (no server): the split follows the weights, a user keeps their
arm, a weight change moves only the users who must move; and the split rendered for Gateway API, Istio and
LiteLLM, validated against their schemas (tests/data/router_schemas)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from scipy.stats import binom

from clihelpers import assert_one_line_error, invoke
from localserve.errors import InputError, UnknownName
from localserve.router import experiment as ex
from localserve.router.arms import Arm, assign, parse_arms, with_weights
from localserve.router.render import percentages

SCHEMAS = Path(__file__).parent / "data" / "router_schemas"
UP = "http://127.0.0.1:11434"
USERS = [f"user-{i}" for i in range(4000)]


def arms(*weights: float) -> list[Arm]:
    return [Arm(f"demo:v{i + 1}", w, "ollama", UP, f"demo:v{i + 1}") for i, w in enumerate(weights)]


def split(arms_: list[Arm]) -> dict[str, str]:
    return {u: assign("demo", u, arms_).version for u in USERS}


def test_users_split_by_weight_within_a_binomial_tolerance():
    for weights in ((90, 10), (50, 50), (1, 2, 7)):
        given = split(arms(*weights))
        for i, w in enumerate(weights):
            n = sum(v == f"demo:v{i + 1}" for v in given.values())
            low, high = binom.interval(0.999, len(USERS), w / sum(weights))
            assert low <= n <= high, (weights, i, n)


def test_a_user_keeps_the_arm_and_another_experiment_splits_independently():
    a = arms(50, 50)
    assert all(assign("demo", u, a) == assign("demo", u, list(a)) for u in USERS[:200])
    same = sum(assign("demo", u, a).version == assign("other", u, a).version for u in USERS)
    assert 0.45 < same / len(USERS) < 0.55  # independent: half agree by chance


@pytest.mark.parametrize("before, after", [((90, 10), (50, 50)), ((50, 50), (90, 10)), ((40, 30, 30), (40, 60, 30)),
                                           ((40, 30, 30), (40, 0, 30))])
def test_changing_one_weight_moves_only_the_share_that_must_move(before, after):
    old, new = split(arms(*before)), split(arms(*after))
    changed = next(i for i, (b, a) in enumerate(zip(before, after)) if b != a)
    arm = f"demo:v{changed + 1}"
    moved = [u for u in USERS if old[u] != new[u]]
    if after[changed] > before[changed]:
        assert all(new[u] == arm for u in moved)  # users only move onto the arm that gained
    else:
        assert all(old[u] == arm for u in moved)  # users only move off the arm that lost
    must = abs(after[changed] / sum(after) - before[changed] / sum(before))
    low, high = binom.interval(0.999, len(USERS), must)
    assert low <= len(moved) <= high


def test_arms_are_parsed_and_bad_ones_refused_in_one_clear_message():
    a = parse_arms("demo", ["demo:v2=90", "demo:v3=10@openai:127.0.0.1:8000/v1#demo-v3"], UP)
    assert a == [Arm("demo:v2", 90.0, "ollama", UP, "demo:v2"),
                 Arm("demo:v3", 10.0, "openai", "http://127.0.0.1:8000", "demo-v3")]
    # every runtime that speaks OpenAI's API is an openai arm that remembers what serves it
    on_apps = parse_arms("demo", ["demo:v2=1@lmstudio:127.0.0.1:1234#localserve/demo", "demo:v3=1@jan:"
                                  "http://127.0.0.1:1337/v1#demo-q4", "demo:v4=1@llama-server:127.0.0.1:8080#t"], UP)
    assert [(x.engine, x.runtime, x.url, x.model) for x in on_apps] == [
        ("openai", "lmstudio", "http://127.0.0.1:1234", "localserve/demo"),
        ("openai", "jan", "http://127.0.0.1:1337", "demo-q4"), ("openai", "llama-server", "http://127.0.0.1:8080", "t")]
    assert [Arm.from_json(x.to_json()) for x in on_apps] == on_apps
    for bad, needle in [(["demo:v2=0", "demo:v3=0"], "do not sum to a positive number"),
                        (["demo:v2=-1"], "is not a number >= 0"), (["demo:v2"], "has no weight"),
                        (["other:v2=1"], "is not a version of demo"), (["demo:latest=1"], "is not a version"),
                        (["demo:v2=1", "demo:v2=3"], "given twice"), (["demo:v2=1@grpc:x"], "unknown arm server"),
                        (["demo:v2=1@openai:http://x"], "lacks the served model"), ([], "no arms")]:
        with pytest.raises(InputError, match=needle):
            parse_arms("demo", bad, UP)
    with pytest.raises(UnknownName, match="unknown arm 'demo:v9'"):
        with_weights(a, {"demo:v9": 1})
    with pytest.raises(InputError, match="do not sum"):
        with_weights(a, {"demo:v2": 0, "demo:v3": 0})


# --- past one machine -----------------------------------------------------------------------------------

def test_percentages_are_whole_and_sum_to_100():
    assert percentages(arms(90, 10)) == {"demo:v1": 90, "demo:v2": 10}
    assert percentages(arms(1, 1, 1)) == {"demo:v1": 34, "demo:v2": 33, "demo:v3": 33}
    assert percentages(arms(2, 0, 1)) == {"demo:v1": 67, "demo:v2": 0, "demo:v3": 33}


def test_ab_set_render_writes_the_split_for_gateway_api_istio_and_litellm_valid_against_their_schemas(tmp_path):
    experiment = ex.Experiment("demo", [Arm("demo:v2", 90, "openai", "http://127.0.0.1:8000", "demo-v2"),
                                        Arm("demo:v3", 10, "ollama", UP, "demo:v3")], "demo:v2", UP, 11435,
                               time.time())
    ex.save(experiment)
    out = tmp_path / "deploy"
    result = invoke("ab", "set", "demo:v3=25", "demo:v2=75", "--render", out, "--gateway", "llm-gw")
    assert result.exit_code == 0, result.output
    assert "(the router is stopped: taken when it resumes)" in result.output
    docs = {name: yaml.safe_load((out / name).read_text()) for name in ("httproute.yaml", "virtualservice.yaml",
                                                                         "litellm.yaml")}
    for name, schema in (("httproute.yaml", "httproute"), ("virtualservice.yaml", "virtualservice"),
                         ("litellm.yaml", "litellm")):
        jsonschema.validate(docs[name], json.loads((SCHEMAS / f"{schema}.schema.json").read_text()))
    route = docs["httproute.yaml"]["spec"]
    assert route["parentRefs"] == [{"name": "llm-gw"}]
    assert [(b["name"], b["weight"]) for b in route["rules"][0]["backendRefs"]] == [("vllm-demo-v2", 75),
                                                                                    ("vllm-demo-v3", 25)]
    istio = docs["virtualservice.yaml"]["spec"]["http"][0]["route"]
    assert sum(r["weight"] for r in istio) == 100 and istio[1]["destination"]["host"] == "vllm-demo-v3"
    models = docs["litellm.yaml"]["model_list"]
    assert [(m["model_name"], m["litellm_params"]["model"], m["litellm_params"]["weight"]) for m in models] == \
        [("demo", "hosted_vllm/demo-v2", 75), ("demo", "ollama_chat/demo:v3", 25)]
    assert models[0]["litellm_params"]["api_base"] == "http://127.0.0.1:8000/v1"

    again = invoke("ab", "set", "demo", "--render", out)  # files only, the weights as they are
    assert again.exit_code == 0 and "demo:v2=75%" in again.output


def test_the_vllm_service_names_are_those_a_vllm_export_named_after_the_version_writes():
    from localserve.router.render import service_name
    from localserve.vllm.serve import ServeConfig, render as serve_files

    service = yaml.safe_load(serve_files(ServeConfig(name="demo-v3"))["k8s/service.yaml"])
    assert service["metadata"]["name"] == service_name("demo:v3") == "vllm-demo-v3"


def test_the_schemas_have_teeth():
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "demo-ab"},
             "spec": {"rules": [{"backendRefs": [{"name": "a", "port": 8000, "weight": 1000001}]}]}}
    with pytest.raises(jsonschema.ValidationError, match="1000001"):
        jsonschema.validate(route, json.loads((SCHEMAS / "httproute.schema.json").read_text()))
    route["spec"]["rules"][0]["backendRefs"] = [{"nmae": "a", "weight": 1}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, json.loads((SCHEMAS / "httproute.schema.json").read_text()))


def test_ab_set_refuses_an_unknown_arm_and_weights_summing_to_zero_in_one_line():
    ex.save(ex.Experiment("demo", arms(90, 10), "demo:v1", UP, 11435, time.time()))
    assert_one_line_error(invoke("ab", "set", "demo:v9=5"), "unknown arm 'demo:v9'", "demo:v1, demo:v2")
    assert_one_line_error(invoke("ab", "set", "demo:v1=0", "demo:v2=0"), "do not sum to a positive number")
    assert_one_line_error(invoke("ab", "set", "demo:v1=-3"), "is not a number >= 0")
    assert_one_line_error(invoke("ab", "set", "demo:v1=1", "other:v2=1"), "versions of 2 models")
    assert_one_line_error(invoke("ab", "set", "nope:v1=1"), "no A/B experiment named 'nope'", "demo")
    assert_one_line_error(invoke("ab", "set", "demo"), "no weights given for demo")
