#!/usr/bin/env python3
"""An independent client of a Sirocco cluster: Python grpcio (Debian's
python3-grpcio) with message classes protoc generates from protos/ at test
time. It starts `sirocco up` (router + prefill + decode on loopback), then

  * streams a Chat and checks the stream's shape: text deltas, then exactly
    one Final with finish reason LENGTH, the usage and the timing breakdown;
  * asks for structured output with a strict JSON schema and validates each
    answer with jsonschema;
  * checks that a malformed request is INVALID_ARGUMENT naming the field;
  * reads grpc.health.v1 (SERVING) and lists the services through server
    reflection (v1alpha, what gRPC C++ 1.51 serves), then fetches the file
    that defines sirocco.v1.Sirocco and decodes it;
  * stops the cluster with SIGTERM and expects a clean exit.

Exit status 77 (ctest: skipped) when grpcio or protoc is missing.

  python_client_test.py --sirocco build/tools/sirocco --protos protos
"""
import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

SKIP = 77
GRPC_PROTO_DIR = "/usr/share/grpc-proto"


def generate(protos_dir, out_dir):
    """protoc --python_out for sirocco.v1, health and reflection."""
    protoc = shutil.which("protoc")
    if protoc is None:
        print("SKIP: protoc not found", file=sys.stderr)
        sys.exit(SKIP)
    files = [
        (protos_dir, "sirocco/v1/sirocco.proto"),
        (GRPC_PROTO_DIR, "grpc/health/v1/health.proto"),
        (GRPC_PROTO_DIR, "grpc/reflection/v1alpha/reflection.proto"),
    ]
    for include, name in files:
        if not os.path.exists(os.path.join(include, name)):
            print(f"SKIP: {include}/{name} not found (Debian grpc-proto)", file=sys.stderr)
            sys.exit(SKIP)
        subprocess.run([protoc, f"-I{include}", f"--python_out={out_dir}", name], check=True)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_cluster(sirocco, model_dir):
    proc = subprocess.Popen([sirocco, "up", "--port", "0", "--prefill", "1", "--decode", "1", "--model", model_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    log = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        log.append(line)
        m = re.search(r"sirocco up: serving on ([\d.]+):(\d+)", line)
        if m:
            # Keep reading its output, so the cluster never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"{m.group(1)}:{m.group(2)}"
    proc.kill()
    raise RuntimeError("sirocco up did not start:\n" + "".join(log))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sirocco", required=True)
    ap.add_argument("--protos", required=True)
    args = ap.parse_args()
    try:
        import grpc  # noqa: F401
    except ImportError:
        print("SKIP: python3-grpcio is not installed (tools/setup.sh installs it)", file=sys.stderr)
        return SKIP

    work = tempfile.mkdtemp(prefix="sirocco_pyclient_")
    try:
        gen = os.path.join(work, "gen")
        os.makedirs(gen)
        generate(os.path.abspath(args.protos), gen)
        import grpc
        # By file path: the generated grpc/... folders would clash with the
        # grpc package itself.
        pb = load(os.path.join(gen, "sirocco/v1/sirocco_pb2.py"), "sirocco_pb2")
        health_pb = load(os.path.join(gen, "grpc/health/v1/health_pb2.py"), "health_pb2")
        refl_pb = load(os.path.join(gen, "grpc/reflection/v1alpha/reflection_pb2.py"), "reflection_pb2")
        from google.protobuf import descriptor_pb2

        proc, target = start_cluster(os.path.abspath(args.sirocco), os.path.join(work, "model"))
        try:
            channel = grpc.insecure_channel(target)
            grpc.channel_ready_future(channel).result(timeout=60)

            # Chat, server-streaming, through generic method handles.
            chat = channel.unary_stream("/sirocco.v1.Sirocco/Chat",
                                        request_serializer=pb.ChatRequest.SerializeToString,
                                        response_deserializer=pb.ChatResponse.FromString)
            req = pb.ChatRequest()
            msg = req.messages.add()
            msg.role = pb.ROLE_USER
            msg.content.add().text = "Hello from Python"
            req.reasoning_effort = pb.REASONING_EFFORT_NONE
            req.sampling.temperature = 0
            req.stop.max_tokens = 6
            req.stop.ignore_eos = True
            req.output.return_token_ids = True
            deltas, finals, ids = 0, [], []
            for resp in chat(req, timeout=120):
                kind = resp.WhichOneof("kind")
                if kind == "delta":
                    assert not finals, "a delta after the Final"
                    deltas += 1
                    ids.extend(resp.delta.token_ids)
                elif kind == "final":
                    finals.append(resp.final)
            assert len(finals) == 1, f"{len(finals)} Final messages"
            final = finals[0]
            assert final.finish_reason == pb.FINISH_REASON_LENGTH, pb.FinishReason.Name(final.finish_reason)
            assert final.usage.completion_tokens == 6 == len(ids), (final.usage, ids)
            assert final.usage.prompt_tokens > 0
            assert final.timing.ttft_us > 0 and final.timing.e2e_us >= final.timing.ttft_us, final.timing
            assert final.prefill_worker and final.decode_worker and final.prefill_worker != final.decode_worker
            print(f"chat: {deltas} deltas, tokens {ids}, ttft {final.timing.ttft_us} us")

            # No max_tokens: the output fills the model's context exactly (the
            # router's default comes from what its workers hold), as
            # `sirocco chat` without --max-tokens asks.
            info = channel.unary_unary("/sirocco.v1.Sirocco/GetModelInfo",
                                       request_serializer=pb.GetModelInfoRequest.SerializeToString,
                                       response_deserializer=pb.ModelInfo.FromString)(pb.GetModelInfoRequest(),
                                                                                      timeout=10)
            with open(os.path.join(work, "model", "config.json")) as f:
                model_config = json.load(f)
            # The default model is multimodal: the decoder's config is text_config.
            model_context = model_config.get("text_config", model_config)["max_position_embeddings"]
            assert info.context_length == model_context, (info.context_length, model_context)
            open_ended = pb.ChatRequest()
            open_ended.CopyFrom(req)
            open_ended.ClearField("stop")
            open_ended.stop.ignore_eos = True
            finals = [r.final for r in chat(open_ended, timeout=300) if r.WhichOneof("kind") == "final"]
            assert len(finals) == 1, f"{len(finals)} Final messages"
            usage = finals[0].usage
            assert finals[0].finish_reason == pb.FINISH_REASON_LENGTH, pb.FinishReason.Name(finals[0].finish_reason)
            assert usage.prompt_tokens + usage.completion_tokens == model_context, usage
            print(f"open-ended chat: {usage.completion_tokens} tokens, context {model_context}")

            # An image: a PNG written here with the standard library (zlib,
            # struct), a 70 x 40 gradient. The model advertises images; the
            # prompt grows by the image's placeholder grid (3 x 2 cells of 28
            # pixels: 6 [IMG] + 2 row ends) and the answer streams as before.
            assert info.supports_images and "image/png" in info.image_mime_types, info
            width, height = 70, 40
            raw = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 3, y * 6, 128))
                           for y in range(height))
            def chunk(kind, data):
                return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
            png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
            with_image = pb.ChatRequest()
            with_image.CopyFrom(req)
            part = with_image.messages[0].content.add()
            part.image.data = png
            part.image.mime_type = "image/png"
            finals = [r.final for r in chat(with_image, timeout=120) if r.WhichOneof("kind") == "final"]
            assert len(finals) == 1, f"{len(finals)} Final messages"
            assert finals[0].usage.completion_tokens == 6, finals[0].usage
            assert finals[0].usage.prompt_tokens == final.usage.prompt_tokens + 8, (finals[0].usage, final.usage)
            print(f"chat with an image: prompt {finals[0].usage.prompt_tokens} tokens")
            broken = pb.ChatRequest()
            broken.CopyFrom(with_image)
            broken.messages[0].content[1].image.data = png[:60]  # header kept, pixels cut off
            try:
                list(chat(broken, timeout=60))
                raise AssertionError("a truncated PNG was accepted")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
                assert e.details().startswith("messages[0].content[1].image"), e.details()
                print("broken image:", e.details())

            # Structured output: a strict schema, sampled; each answer must be
            # JSON that jsonschema (an independent validator) accepts.
            import jsonschema
            schema = {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 8},
                    "population": {"type": "integer", "minimum": 1, "maximum": 99999},
                    "coastal": {"type": "boolean"},
                    "rivers": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
                    "kind": {"enum": ["town", "city", "village"]},
                },
                "required": ["city", "population", "kind"],
                "additionalProperties": False,
            }
            for seed in range(4):
                structured = pb.ChatRequest()
                structured.CopyFrom(req)
                structured.ClearField("stop")
                structured.stop.max_tokens = 300
                structured.sampling.temperature = 1.0
                structured.sampling.seed = seed
                structured.response_format.type = pb.ResponseFormat.TYPE_JSON_SCHEMA
                structured.response_format.json_schema.name = "place"
                structured.response_format.json_schema.schema = json.dumps(schema)
                structured.response_format.json_schema.strict = True
                text, finals = "", []
                for r in chat(structured, timeout=120):
                    if r.WhichOneof("kind") == "delta":
                        text += r.delta.text
                    else:
                        finals.append(r.final)
                assert len(finals) == 1 and finals[0].finish_reason == pb.FINISH_REASON_STOP, (finals, text)
                jsonschema.validate(json.loads(text), schema)
                print(f"structured output (seed {seed}): {text}")

            # A malformed field: INVALID_ARGUMENT naming it.
            bad = pb.ChatRequest()
            bad.CopyFrom(req)
            bad.sampling.top_p = 1.5
            try:
                list(chat(bad, timeout=30))
                raise AssertionError("top_p 1.5 was accepted")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
                assert e.details().startswith("sampling.top_p"), e.details()
                print("bad request:", e.details())

            # Health.
            check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                                        response_deserializer=health_pb.HealthCheckResponse.FromString)
            status = check(health_pb.HealthCheckRequest(service=""), timeout=10).status
            assert status == health_pb.HealthCheckResponse.SERVING, status
            print("health: SERVING")

            # Reflection: list the services, then fetch the Sirocco file.
            refl = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                         request_serializer=refl_pb.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=refl_pb.ServerReflectionResponse.FromString)
            answers = list(refl(iter([refl_pb.ServerReflectionRequest(list_services=""),
                                      refl_pb.ServerReflectionRequest(file_containing_symbol="sirocco.v1.Sirocco")]),
                                timeout=10))
            services = sorted(s.name for s in answers[0].list_services_response.service)
            for want in ("grpc.health.v1.Health", "sirocco.v1.Sirocco"):
                assert want in services, services
            files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                     for b in answers[1].file_descriptor_response.file_descriptor_proto]
            methods = {m.name for f in files for s in f.service if s.name == "Sirocco" for m in s.method}
            assert {"Chat", "Generate", "Tokenize", "GetModelInfo"} <= methods, methods
            print("reflection:", services, sorted(methods))
            channel.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        assert rc == 0, f"sirocco up exited with {rc}"
        print("PASS")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
