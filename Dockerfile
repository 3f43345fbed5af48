# The project's image: the same install as `make setup` (one venv at /opt/vora), used by the
# Prefect server and worker services of docker-compose.yml.
FROM python:3.11-slim
ARG TORCH_SPEC=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 PREFECT_SERVER_ANALYTICS_ENABLED=false NO_ALBUMENTATIONS_UPDATE=1
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile README.md ./
COPY vora_core ./vora_core
COPY flows ./flows
COPY catalogs ./catalogs
COPY ablations ./ablations
RUN make setup VENV=/opt/vora PYTHON=python3.11 TORCH_SPEC="$TORCH_SPEC"
ENV PATH=/opt/vora/bin:$PATH
CMD ["vora", "--help"]
