#!/usr/bin/env python3
"""The container image's recipe (deploy/docker/Dockerfile), checked against
this build without a container engine:

* every shared library the binaries the image copies load (ldd) comes from
  a Debian package that deploy/docker/runtime-packages.txt lists (the
  runtime stage installs exactly those);
* every file the runtime stage copies from the build stage exists in this
  build at the same place under the build folder;
* the build stage's `sirocco` commands that make the embedded model run as
  written (build and output folders mapped here) and give a model the
  worker loads, where the Helm chart's default model path points.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

import yaml

ARGS = None


def dockerfile():
    with open(os.path.join(ARGS.root, "deploy", "docker", "Dockerfile")) as f:
        text = f.read()
    return text.replace("\\\n", " ")  # join continued lines


def copied_from_build():
    """(sources under /build, destination) of COPY --from=build lines."""
    out = []
    for line in dockerfile().splitlines():
        if not line.startswith("COPY --from=build "):
            continue
        parts = shlex.split(line)
        if len(parts) >= 4:
            out += [(s, parts[-1]) for s in parts[2:-1]]
    return out


def package_of(path):
    real = os.path.realpath(path)
    candidates = [real, path]
    # Debian 12 is merged-/usr: dpkg may record /lib for what lives in /usr/lib.
    for p in list(candidates):
        if p.startswith("/usr/lib/"):
            candidates.append(p[len("/usr"):])
    for p in candidates:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    return None


class ImageTest(unittest.TestCase):
    def test_runtime_packages_cover_every_linked_library(self):
        with open(os.path.join(ARGS.root, "deploy", "docker", "runtime-packages.txt")) as f:
            listed = {l.strip() for l in f if l.strip() and not l.startswith("#")}
        needed = {}
        binaries = [s for s, _ in copied_from_build() if s.startswith("/build/")]
        self.assertTrue(binaries)
        for b in binaries:
            path = os.path.join(ARGS.build, b[len("/build/"):])
            out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
            for m in re.finditer(r"=> (/\S+)", out):
                pkg = package_of(m.group(1))
                self.assertIsNotNone(pkg, f"{m.group(1)} (needed by {b}) belongs to no Debian package")
                needed.setdefault(pkg, m.group(1))
        base = {"libc6", "libgcc-s1"}  # in every Debian image
        missing = {p: lib for p, lib in needed.items() if p not in listed and p not in base}
        self.assertEqual(missing, {}, "add these packages to deploy/docker/runtime-packages.txt")

    def test_copied_files_exist_in_the_build(self):
        for src, _ in copied_from_build():
            if src.startswith("/build/"):
                self.assertTrue(os.path.isfile(os.path.join(ARGS.build, src[len("/build/"):])), src)

    def test_the_embedded_model_is_made_as_written_and_loads(self):
        runs = [line for line in dockerfile().splitlines() if line.startswith("RUN /build/tools/sirocco")]
        self.assertEqual(len(runs), 1)
        tmp = tempfile.mkdtemp(prefix="sirocco_image_")
        cmds = runs[0][len("RUN "):].split("&&")
        for c in cmds:
            argv = shlex.split(c)
            argv = [a.replace("/build/", ARGS.build + "/").replace("/out/", tmp + "/") for a in argv]
            argv = [os.path.join(ARGS.root, a) if a.startswith("third_party/") else a for a in argv]
            r = subprocess.run(argv, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, f"{argv}: {r.stderr}")
        model = os.path.join(tmp, "models", "tiny")
        for name in ("config.json", "tekken.json"):
            self.assertTrue(os.path.isfile(os.path.join(model, name)), name)
        # Where the image puts it is where the chart looks by default.
        dest = next(d for s, d in copied_from_build() if s == "/out/models")
        with open(os.path.join(ARGS.root, "deploy", "helm", "sirocco", "values.yaml")) as f:
            values = yaml.safe_load(f)
        self.assertEqual(values["model"]["path"], dest.rstrip("/") + "/tiny")
        # The worker loads it: one greedy generation.
        r = subprocess.run([os.path.join(ARGS.build, "tools", "sirocco"), "generate", "--model", model,
                            "--tokens", "1,22,333", "--max-tokens", "3"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"token_ids"', r.stdout)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--build", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
