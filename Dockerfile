# Build: `make build` itself, so the image's binary has the same flags
# (static, trimmed, version and commit stamped) as bin/funnel. `make docker`
# passes VERSION and COMMIT from git; the build context has no .git.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN make build VERSION="${VERSION}" COMMIT="${COMMIT}" BIN=/out/funnel

# Run: a static binary on distroless, as a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/funnel /usr/local/bin/funnel
# Inside a container funnel must listen on all interfaces; set the upstream
# with FUNNEL_UPSTREAM or REDIS_URL.
ENV FUNNEL_LISTEN=0.0.0.0:6380 \
    FUNNEL_METRICS_LISTEN=0.0.0.0:9121
EXPOSE 6380 9121
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/funnel"]
