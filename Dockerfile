# Build the wheel, then run meter on a data volume. Multi-stage: the runtime image has no compiler.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv && /venv/bin/pip install maturin==1.16.0
WORKDIR /src
COPY . .
RUN /venv/bin/maturin build --release --out /wheels

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
VOLUME /data
EXPOSE 8080
# Set METER_ADMIN_KEY, or read the generated admin key from the first start's output.
CMD ["meter", "serve", "--data-dir", "/data", "--host", "0.0.0.0", "--port", "8080"]
