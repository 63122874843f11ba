"""The A/B router: versions side by side on live traffic, the verdict from what it measured, and drift.

    experiment.start("demo", ["demo:v2=90", "demo:v3=10"])   # a router on 127.0.0.1:11435, in the background
    experiment.set_weights("demo", {"demo:v3": 50})          # at once, no restart
    stats.report("demo")                                       # per arm, with Fisher / Mann-Whitney tests
    decide.decide("demo", "error_rate <= control + 0.01")      # promote through the gate, or weight 0
    drift.drift("demo")                                        # recent traffic against a baseline window
    render.render(experiment, "deploy/")                       # the split for Gateway API, Istio, LiteLLM

Modules: arms (sticky weighted assignment), experiment (the experiment file, the background process),
app (the ASGI app: Ollama's and OpenAI's APIs), protocols (NDJSON / SSE relays), log (SQLite request
log), capture (opt-in conversations and corrections), server (uvicorn), stats, decide, drift, charts, render.
"""
