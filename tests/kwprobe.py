def pytest_runtest_logreport(report):
    if report.when == "call" and "vllm" in report.keywords:
        print("VLLM-TIER:", report.nodeid)
