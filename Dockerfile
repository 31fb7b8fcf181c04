# Runner image / job container for GPU merges: CUDA PyTorch and paramdelta, nothing else.
#   docker build -t paramdelta-bot .
#   docker run --rm --gpus all -e HF_TOKEN -v /opt/hf-cache:/cache/huggingface \
#     -v "$PWD:/work" paramdelta-bot run --watchlist watchlist.yaml
# CUDA 12.6 runs on any driver >= 560; torch here matches the version the README pins.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1

WORKDIR /opt/paramdelta
COPY pyproject.toml README.md ./
COPY bot/ bot/
COPY templates/ templates/
# The base image's torch satisfies the dependency, so pip adds only the small pure-Python
# ones and transformers (the [check] extra: the pre-publish check loads the merged model);
# the smoke test fails the build if the entry point does not start.
RUN pip install --no-cache-dir './[check]' && paramdelta --version

# A high uid that no base image user takes; a job container maps it with `--user`.
RUN useradd --create-home --uid 10001 --user-group paramdelta \
    && mkdir -p /cache/huggingface /work \
    && chown paramdelta:paramdelta /cache/huggingface /work
USER 10001:10001
# Models are large: keep the cache on a volume (or a bind mount) so it outlives the container.
VOLUME ["/cache/huggingface"]
WORKDIR /work

ENTRYPOINT ["paramdelta"]
CMD ["--help"]
