#!/bin/sh
# `weed mini` as an S3 server only, on 127.0.0.1: S3 on $S3_PORT, its internal servers on the
# ports after it (so that they clash with nothing on the host network).
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${S3_PORT:=9000}"
cat >/data/s3.json <<JSON
{"identities": [{"name": "admin",
  "credentials": [{"accessKey": "$MINIO_ROOT_USER", "secretKey": "$MINIO_ROOT_PASSWORD"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
p=$S3_PORT
exec weed mini -dir=/data -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config=/data/s3.json \
  -webdav=false -admin.ui=false -master.telemetry=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.port="$p" -s3.port.grpc=$((p + 1)) -master.port=$((p + 2)) -master.port.grpc=$((p + 3)) \
  -volume.port=$((p + 4)) -volume.port.grpc=$((p + 5)) -filer.port=$((p + 6)) \
  -filer.port.grpc=$((p + 7)) -admin.port=$((p + 8)) -admin.port.grpc=$((p + 9))
