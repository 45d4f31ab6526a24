// Package deploy holds funnel's deployment examples, and only tests as
// code: kubernetes/ (a native sidecar), compose/ (Redis, funnel and a
// BullMQ demo app), systemd/ (a hardened unit) and grafana/ (a dashboard).
// The tests build bin/funnel as `make build` does and check each example
// against that binary: its flags, environment variables, default ports and
// /metrics.
package deploy
