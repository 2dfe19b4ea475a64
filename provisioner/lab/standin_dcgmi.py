#!/usr/bin/python3
"""Stand-in dcgmi for gpuctl lab nodes (installed by the lab's datacenter-gpu-manager
package; stdlib only). ``diag -r N --json`` prints DCGM 3.3's JSON layout for the node's
GPUs, failing the tests that the node's injected faults would fail on real hardware."""

import json
import sys

STATE = "/etc/gpuctl-lab/gpus.json"
VERSION = "3.3.9"
TESTS = {
    1: [("Deployment", ["Denylist", "NVML Library", "CUDA Main Library", "Permissions and "
                        "OS Blocks", "Persistence Mode", "Environment Variables",
                        "Page Retirement/Row Remap", "Graphics Processes", "Inforom"])],
    2: [("Integration", ["PCIe"]), ("Hardware", ["GPU Memory"])],
    3: [("Stress", ["Targeted Stress", "Targeted Power", "Memory Bandwidth"]),
        ("Hardware", ["Diagnostic"])],
    # Level 4 (extended) adds DCGM's memtest and pulse test.
    4: [("Hardware", ["Memtest"]), ("Stress", ["Pulse Test"])],
}


def gpu_result(test, g):
    """Pass, or Fail with DCGM-like warnings, for one GPU."""
    fail = None
    if test in ("GPU Memory", "Page Retirement/Row Remap", "Memtest") and (
            g.get("ecc_dram_uncorrectable") or g.get("remap_failure")):
        fail = (95, "Uncorrectable DRAM ECC errors or row remap failure detected on GPU %d"
                % g["index"])
    elif test == "PCIe" and g["pcie_width_current"] < g["pcie_width_max"]:
        fail = (8, "GPU %d PCIe link width x%d is below its maximum x%d"
                % (g["index"], g["pcie_width_current"], g["pcie_width_max"]))
    elif test in ("Targeted Stress", "Targeted Power", "Diagnostic", "Pulse Test") and \
            g["thermal_slowdown"]:
        fail = (43, "Thermal violations totaling 12.5 seconds for GPU %d" % g["index"])
    out = {"gpu_id": str(g["index"]), "status": "Fail" if fail else "Pass"}
    if fail:
        out["warnings"] = [{"error_category": 2, "error_id": fail[0], "warning": fail[1]}]
    return out


def diag(level, as_json):
    with open(STATE) as fh:
        gpus = json.load(fh)["gpus"]
    cats = []
    if level not in TESTS:
        print("Error: invalid run level %s (1-4)" % level, file=sys.stderr)
        return 1
    for lvl in range(1, level + 1):
        for cat, names in TESTS[lvl]:
            tests = []
            for name in names:
                if cat == "Deployment":
                    results = [{"status": "Pass"}]
                    bad = [gpu_result(name, g) for g in gpus]
                    if any(r["status"] == "Fail" for r in bad):
                        results = [r for r in bad if r["status"] == "Fail"]
                else:
                    results = [gpu_result(name, g) for g in gpus]
                tests.append({"name": name, "results": results})
            cats.append({"category": cat, "tests": tests})
    doc = {"DCGM GPU Diagnostic": {"test_categories": cats, "version": VERSION}}
    failed = any(r["status"] == "Fail" for c in cats for t in c["tests"] for r in t["results"])
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        for c in cats:
            print("+--- %s" % c["category"])
            for t in c["tests"]:
                bad = [r for r in t["results"] if r["status"] == "Fail"]
                print("| %-40s %s" % (t["name"], "Fail" if bad else "Pass"))
    return 226 if failed else 0


def main(argv):
    if argv[:1] in (["-v"], ["--version"]):
        print("Version : %s" % VERSION)
        return 0
    if argv[:1] == ["diag"]:
        level = 1
        for flag in ("-r", "--run"):
            if flag in argv and argv.index(flag) + 1 < len(argv):
                value = argv[argv.index(flag) + 1]
                level = int(value) if value.isdigit() else 1
        return diag(level, "--json" in argv or "-j" in argv)
    print("dcgmi (lab stand-in): %s" % " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
