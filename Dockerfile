# sdbatch image: the pipeline and its simulated WebUI backend.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install --no-cache-dir ".[fleet]"
COPY jobs ./jobs
ENTRYPOINT ["sdbatch"]
CMD ["--help"]
