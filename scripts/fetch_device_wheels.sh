#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels the GPU machine lacks (CPython 3.12, x86-64):
# the server's (fastapi, uvicorn, pydantic, pyjwt, cryptography), gguf, obstore, moto's S3 server
# with boto3 (bench_s3.py), Run:ai Model Streamer with its S3 package (the baselines) and py-spy
# (bench_serve.py --py-spy).
# scripts/device_run.sh installs them there; carry ".whl" in the device call. ~42 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
PACKAGES=(
    annotated_types==0.7.0 fastapi==0.165.0 opentelemetry_api==1.45.2 pydantic==2.13.4
    pydantic_core==2.46.4 starlette==1.10.0 typing_inspection==0.4.2 uvicorn==0.54.0
    pyjwt==2.15.1 cryptography==48.0.0 cffi==2.0.0 gguf==0.19.0 obstore==0.12.1
    moto==5.2.1 boto3==1.43.11 botocore==1.43.11 s3transfer==0.17.0 jmespath==1.1.0
    werkzeug==3.1.8 flask==3.1.3 flask_cors==6.0.2 blinker==1.9.0 click==8.5.1
    itsdangerous==2.2.0 xmltodict==1.0.4 responses==0.26.0 python_dateutil==2.9.0.post0
    six==1.17.0 humanize==4.17.0 runai_model_streamer==0.16.1 runai_model_streamer_s3==0.16.1
    py_spy==0.4.3
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${PACKAGES[@]}"
du -sh .whl
