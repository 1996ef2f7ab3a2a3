# syntax=docker/dockerfile:1
# Builds the keyward binary (all modes) into a static, non-root image.
FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOOS=linux GOTOOLCHAIN=local
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
RUN go build -trimpath -ldflags="-s -w" -o /out/keyward ./cmd/keyward

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyward /keyward
USER 65532:65532
ENTRYPOINT ["/keyward"]
