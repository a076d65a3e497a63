module xkafka-bench/peers/go-xkafka

go 1.25

require (
	github.com/confluentinc/confluent-kafka-go/v2 v2.12.0
	github.com/gojekfarm/xtools/xkafka v0.11.1
)

require (
	github.com/pkg/errors v0.9.1 // indirect
	github.com/rs/xid v1.5.0 // indirect
	github.com/sourcegraph/conc v0.3.0 // indirect
	go.uber.org/atomic v1.10.0 // indirect
	go.uber.org/multierr v1.9.0 // indirect
)

// Go xkafka v0.11.1 (tag xkafka/v0.11.1 of github.com/gojekfarm/xtools) is
// not served by the Go module proxy this project can reach: the benchmark
// builds with a copy of this file that replaces it by its published source
// outside the repository (../shared/peers/go-xkafka-v0.11.1, or
// XKAFKA_GO_XKAFKA_SRC; see `go_modfile` in src/peers.rs).
