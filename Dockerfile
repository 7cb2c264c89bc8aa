# meter in a small image: the wheel is built in a Rust stage, the runtime stage has no compiler, runs as a non-root
# user on a data volume and reports its health from /readyz. `docker compose up` (compose.yaml) runs it.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir maturin==1.16.0
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY crates crates
COPY python python
# --strip: the shipped extension carries no debug info (23 MB instead of 85).
RUN /venv/bin/maturin build --release --strip --out /wheels

FROM python:3.11-slim-bookworm
# The run-time dependencies exactly as tested (requirements.txt pins them all), then meter itself without resolving.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/*.whl && rm -rf /wheels
RUN useradd --system --uid 10001 --home-dir /data --no-create-home meter && mkdir /data && chown meter:meter /data
USER meter
VOLUME /data
EXPOSE 8080
# /readyz answers 200 once the stores are open and the engine writes; a degraded (read-only) start answers 503.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
# Set METER_ADMIN_KEY (`meter admin-key new` makes one), or read the operator key from the first start's output.
CMD ["meter", "serve", "--data-dir", "/data", "--host", "0.0.0.0", "--port", "8080"]
