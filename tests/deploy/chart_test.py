#!/usr/bin/env python3
"""The Helm chart (deploy/helm/sirocco), rendered by helm itself.

* `helm lint --strict` passes with the default and the GPU values.
* Every manifest the chart renders, for several value sets, is valid against
  Kubernetes' own JSON schemas (one release, strict: unknown fields fail);
  the custom resources (ServiceMonitor, DestinationRule) are checked for
  their identifying fields only.
* Invariants a cluster depends on: the router finds each worker pool
  through that pool's headless Service (host, port, selector), workers get
  their role, the worker token comes from a Secret that exists, the GPU
  values ask for a GPU and run the CUDA kernels, bad values fail the render
  with a message.
* The rendered commands run: the containers' command, args and env, exactly
  as rendered (env expanded as the kubelet does; the cluster DNS names
  pointed at 127.0.0.1, the only rewrite), start the router and a prefill
  and a decode worker from this build; a chat through the router streams an
  answer; every readiness and liveness path the probes name answers 200; and
  SIGTERM stops each process cleanly.

Needs tools/setup.sh's helm (third_party/helm) and schemas
(third_party/kubernetes-json-schema), and Debian's python3-yaml and
python3-jsonschema.
"""
import argparse
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import jsonschema
import yaml

ARGS = None  # set in main()
RELEASE, NAMESPACE = "s1", "llm"


def helm():
    return os.path.join(ARGS.root, "third_party", "helm", "helm")


def chart():
    return os.path.join(ARGS.root, "deploy", "helm", "sirocco")


def render(sets=(), values=(), expect_ok=True):
    cmd = [helm(), "template", RELEASE, chart(), "--namespace", NAMESPACE]
    for v in values:
        cmd += ["-f", os.path.join(chart(), v)]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if not expect_ok:
        return r
    if r.returncode != 0:
        raise AssertionError(f"helm template failed: {r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def flags(c):
    out = {}
    for a in c["args"]:
        m = re.fullmatch(r"--([a-z-]+)=(.*)", a)
        assert m, f"argument {a!r} is not --name=value"
        out.setdefault(m.group(1), []).append(m.group(2))
    return out


SCHEMA_CACHE = {}


def validate(doc):
    api = doc["apiVersion"]
    group, _, version = api.rpartition("/")
    name = doc["kind"].lower() + ("-" + group.split(".")[0] if group else "") + "-" + version + ".json"
    path = os.path.join(ARGS.root, "third_party", "kubernetes-json-schema", name)
    if not os.path.exists(path):
        raise AssertionError(f"no Kubernetes schema for {doc['kind']} {api} ({name})")
    if path not in SCHEMA_CACHE:
        with open(path) as f:
            schema = json.load(f)
        # Each schema's $id is under https://kubernetes.io/api/ and refers to
        # /api/_definitions.json: served from the local copy, never fetched.
        with open(os.path.join(os.path.dirname(path), "_definitions.json")) as f:
            definitions = json.load(f)
        resolver = jsonschema.RefResolver.from_schema(
            schema, store={"https://kubernetes.io/api/_definitions.json": definitions})
        SCHEMA_CACHE[path] = jsonschema.validators.validator_for(schema)(schema, resolver=resolver)
    errors = sorted(SCHEMA_CACHE[path].iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        raise AssertionError(
            f"{doc['kind']} {doc['metadata']['name']}: "
            + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))


CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1", "DestinationRule": "networking.istio.io/v1"}

VALUE_SETS = {
    "default": dict(),
    "colocated": dict(sets=["mode=colocated", "colocated.replicas=3"]),
    "gpu": dict(values=["values-gpu.yaml"]),
    "everything": dict(sets=[
        "serviceMonitor.enabled=true", "istio.enabled=true", "workerToken.existingSecret=my-token",
        "model.claim=models", "model.path=/models/m", "model.name=mistral-small-4",
        "router.contextLength=262144", "router.maxInFlight=512", "router.extraArgs[0]=--load-interval-ms=100",
        "decode.autoscaling.enabled=true", "decode.autoscaling.maxReplicas=8",
        "decode.autoscaling.metrics[0].type=Pods",
        "decode.autoscaling.metrics[0].pods.metric.name=sirocco_num_requests_waiting",
        "decode.autoscaling.metrics[0].pods.target.type=AverageValue",
        "decode.autoscaling.metrics[0].pods.target.averageValue=4",
        "workerDefaults.extraEnv[0].name=UCX_LOG_LEVEL", "workerDefaults.extraEnv[0].value=warn",
        "serviceAccount.create=true", "decode.priorityClassName=latency-critical",
        "workerDefaults.topologySpreadConstraints[0].maxSkew=1",
        "workerDefaults.topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
        "workerDefaults.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    ]),
}


class ChartTest(unittest.TestCase):
    def test_lint(self):
        for extra in ([], ["-f", os.path.join(chart(), "values-gpu.yaml")]):
            r = subprocess.run([helm(), "lint", "--strict", chart()] + extra, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_every_manifest_is_valid_kubernetes(self):
        for name, vs in VALUE_SETS.items():
            with self.subTest(values=name):
                docs = render(**vs)
                self.assertGreater(len(docs), 0)
                for d in docs:
                    if d["kind"] in CUSTOM_KINDS:
                        self.assertEqual(d["apiVersion"], CUSTOM_KINDS[d["kind"]])
                        self.assertTrue(d["metadata"]["name"] and d["spec"])
                    else:
                        validate(d)

    def test_the_router_finds_each_pool_through_its_headless_service(self):
        for mode, pools in (("disaggregated", {"prefill": "prefill", "decode": "decode"}),
                            ("colocated", {"colocated": "both"})):
            with self.subTest(mode=mode):
                docs = render(sets=[f"mode={mode}"])
                deps, svcs = by_kind(docs, "Deployment"), by_kind(docs, "Service")
                router = flags(container(deps[f"{RELEASE}-sirocco-router"]))
                dns = {k[:-len("-dns")]: v for k, v in router.items() if k.endswith("-dns")}
                self.assertEqual(set(dns), set(pools))
                for pool, role in pools.items():
                    (target,) = dns[pool]
                    host, port = target.rsplit(":", 1)
                    svc = svcs[f"{RELEASE}-sirocco-{pool}"]
                    self.assertEqual(host, f"{RELEASE}-sirocco-{pool}.{NAMESPACE}.svc.cluster.local")
                    self.assertEqual(svc["spec"]["clusterIP"], "None", "the router resolves every pod: headless")
                    grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
                    self.assertEqual(str(grpc["port"]), port)
                    dep = deps[f"{RELEASE}-sirocco-{pool}"]
                    labels = dep["spec"]["template"]["metadata"]["labels"]
                    self.assertTrue(svc["spec"]["selector"].items() <= labels.items())
                    self.assertTrue(dep["spec"]["selector"]["matchLabels"].items() <= labels.items())
                    w = flags(container(dep))
                    self.assertEqual(w["role"], [role])
                    self.assertEqual(w["listen"], [f"0.0.0.0:{port}"])
                    # No pool's pods are selected by another pool's Service.
                    for other in pools:
                        if other != pool:
                            sel = svcs[f"{RELEASE}-sirocco-{other}"]["spec"]["selector"]
                            self.assertFalse(sel.items() <= labels.items())

    def test_the_worker_token_comes_from_a_secret_that_exists(self):
        for sets, secret in (([], f"{RELEASE}-sirocco-worker-token"), (["workerToken.existingSecret=mine"], "mine")):
            docs = render(sets=sets)
            rendered = by_kind(docs, "Secret")
            self.assertEqual(secret in rendered, not sets, "a Secret is made only without existingSecret")
            if not sets:
                token = base64.b64decode(rendered[secret]["data"]["token"])
                self.assertGreaterEqual(len(token), 32)
            for dep in by_kind(docs, "Deployment").values():
                env = {e["name"]: e for e in container(dep)["env"]}
                ref = env["SIROCCO_WORKER_TOKEN"]["valueFrom"]["secretKeyRef"]
                self.assertEqual((ref["name"], ref["key"]), (secret, "token"))

    def test_gpu_values_run_cuda_on_a_gpu_per_worker(self):
        deps = by_kind(render(values=["values-gpu.yaml"]), "Deployment")
        for pool in ("prefill", "decode"):
            c = container(deps[f"{RELEASE}-sirocco-{pool}"])
            f = flags(c)
            self.assertEqual((f["kernels"], f["weights"], f["ucx-transports"]), (["cuda"], ["fp8"], ["default"]))
            self.assertEqual(str(c["resources"]["limits"]["nvidia.com/gpu"]), "1")
        self.assertEqual(flags(container(deps[f"{RELEASE}-sirocco-prefill"]))["max-tokens-per-step"], ["8192"])
        self.assertEqual(flags(container(deps[f"{RELEASE}-sirocco-decode"]))["max-seqs-per-step"], ["256"])
        router = container(deps[f"{RELEASE}-sirocco-router"])
        self.assertNotIn("nvidia.com/gpu", router.get("resources", {}).get("limits", {}))

    def test_pools_override_defaults_and_autoscaling_owns_replicas(self):
        docs = render(sets=["decode.numBlocks=77", "decode.autoscaling.enabled=true",
                            "decode.autoscaling.metrics[0].type=Resource",
                            "decode.autoscaling.metrics[0].resource.name=cpu",
                            "decode.autoscaling.metrics[0].resource.target.type=Utilization",
                            "decode.autoscaling.metrics[0].resource.target.averageUtilization=80"])
        deps = by_kind(docs, "Deployment")
        self.assertEqual(flags(container(deps[f"{RELEASE}-sirocco-decode"]))["num-blocks"], ["77"])
        self.assertEqual(flags(container(deps[f"{RELEASE}-sirocco-prefill"]))["num-blocks"], ["1024"])
        self.assertNotIn("replicas", deps[f"{RELEASE}-sirocco-decode"]["spec"])
        self.assertIn(f"{RELEASE}-sirocco-decode", by_kind(docs, "HorizontalPodAutoscaler"))

    def test_pods_run_unprivileged_with_a_read_only_root(self):
        for name, vs in VALUE_SETS.items():
            with self.subTest(values=name):
                docs = render(**vs)
                for dep in by_kind(docs, "Deployment").values():
                    pod = dep["spec"]["template"]["spec"]
                    self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                    self.assertFalse(pod["automountServiceAccountToken"])
                    c = container(dep)
                    self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
                    self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
                    self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
                    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                    self.assertIn("/tmp", mounts, "a read-only root needs a writable /tmp")
                    volumes = {v["name"] for v in pod["volumes"]}
                    self.assertTrue(set(mounts.values()) <= volumes)
                    if pod["serviceAccountName"] != "default":
                        self.assertIn(pod["serviceAccountName"], by_kind(docs, "ServiceAccount"))

    def test_draining_fits_the_grace_period(self):
        for dep in by_kind(render(), "Deployment").values():
            grace = int(flags(container(dep))["drain-grace-s"][0])
            self.assertGreater(dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], grace)

    def test_bad_values_fail_with_a_message(self):
        for sets, says in ((["mode=split"], "mode: colocated or disaggregated"),
                           (["prefill.kernels=tpu"], "prefill.kernels: ref, avx2 or cuda"),
                           (["decode.autoscaling.enabled=true"], "decode.autoscaling.metrics")):
            with self.subTest(sets=sets):
                r = render(sets=sets, expect_ok=False)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(says, r.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


class RenderedCommandsTest(unittest.TestCase):
    def test_the_rendered_commands_serve_a_chat(self):
        tmp = tempfile.mkdtemp(prefix="sirocco_chart_")
        model = os.path.join(tmp, "model")
        sirocco = os.path.join(ARGS.build, "tools", "sirocco")
        subprocess.run([sirocco, "make-model", "--preset", "tiny", "--seed", "0", "--out", model],
                       check=True, capture_output=True)
        subprocess.run([sirocco, "make-tekken", "--base",
                        os.path.join(ARGS.root, "third_party", "tekken", "tekken_240911.json"),
                        "--version", "v15", "--out", os.path.join(model, "tekken.json")],
                       check=True, capture_output=True)
        ports = {k: free_port() for k in ("router", "router_m", "prefill", "prefill_m", "decode", "decode_m")}
        docs = render(sets=[
            f"model.path={model}", f"router.grpcPort={ports['router']}", f"router.metricsPort={ports['router_m']}",
            f"prefill.grpcPort={ports['prefill']}", f"prefill.metricsPort={ports['prefill_m']}",
            f"decode.grpcPort={ports['decode']}", f"decode.metricsPort={ports['decode_m']}",
            "workerDefaults.numBlocks=256"])
        token = base64.b64decode(by_kind(docs, "Secret")[f"{RELEASE}-sirocco-worker-token"]["data"]["token"]).decode()
        binaries = {"sirocco-router": os.path.join(ARGS.build, "router", "sirocco-router"),
                    "sirocco-decode": os.path.join(ARGS.build, "decode", "sirocco-decode")}
        deps = by_kind(docs, "Deployment")
        procs = {}
        try:
            for pool in ("prefill", "decode", "router"):
                dep = deps[f"{RELEASE}-sirocco-{pool}"]
                c = container(dep)
                env = {"POD_NAME": f"{dep['metadata']['name']}-0", "POD_IP": "127.0.0.1"}
                for e in c["env"]:
                    if "value" in e:
                        env[e["name"]] = e["value"]
                    elif "secretKeyRef" in e.get("valueFrom", {}):
                        env[e["name"]] = token
                # The kubelet expands $(VAR) in args from the container's env.
                args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
                args = [re.sub(r"[\w.-]+\.svc\.cluster\.local", "127.0.0.1", a) for a in args]
                log = open(os.path.join(tmp, pool + ".log"), "w")
                procs[pool] = (subprocess.Popen([binaries[c["command"][0]]] + args, stdout=log, stderr=log,
                                                env={**os.environ, **{k: v for k, v in env.items()
                                                                      if k == "SIROCCO_WORKER_TOKEN"}}), c)
                port = ports[pool]
                self.assertTrue(wait_port(port, procs[pool][0], 120), self.logs(tmp))
            # The probes the chart declares answer.
            for pool, (proc, c) in procs.items():
                for probe in ("readinessProbe", "livenessProbe"):
                    p = c[probe]["httpGet"]
                    port = next(x["containerPort"] for x in c["ports"] if x["name"] == p["port"])
                    end = time.time() + 30
                    while True:
                        try:
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}{p['path']}", timeout=2) as r:
                                self.assertEqual(r.status, 200)
                                break
                        except OSError:
                            if time.time() > end:
                                raise
                            time.sleep(0.5)
                self.assertEqual(c["startupProbe"]["grpc"]["port"], ports[pool])
            # A chat through the router, once it has found both pools.
            end = time.time() + 60
            while True:
                r = subprocess.run([sirocco, "chat", "--target", f"127.0.0.1:{ports['router']}", "--max-tokens", "8",
                                    "Hello"], capture_output=True, text=True, timeout=120)
                if r.returncode == 0 or time.time() > end:
                    break
                time.sleep(1)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.logs(tmp))
            self.assertIn("FINISH_REASON_LENGTH", r.stdout + r.stderr)
            self.assertIn("completion 8 tokens", r.stdout + r.stderr)
            # Pod termination: SIGTERM, then a clean exit within the grace period.
            for pool in ("router", "decode", "prefill"):
                proc, _ = procs[pool]
                proc.send_signal(signal.SIGTERM)
                grace = deps[f"{RELEASE}-sirocco-{pool}"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                self.assertEqual(proc.wait(timeout=grace), 0, self.logs(tmp))
        finally:
            for proc, _ in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    @staticmethod
    def logs(tmp):
        out = ""
        for name in sorted(os.listdir(tmp)):
            if name.endswith(".log"):
                with open(os.path.join(tmp, name)) as f:
                    out += f"\n--- {name}\n" + f.read()[-3000:]
        return out


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--build", required=True)
    ARGS, rest = p.parse_known_args()
    if not os.path.exists(helm()):
        print(f"no helm at {helm()}: run tools/setup.sh", file=sys.stderr)
        return 1
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    sys.exit(main())
