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

// Go xkafka v0.11.1 (tag xkafka/v0.11.1 of github.com/gojekfarm/xtools,
// commit fbbbee263b3c4807c1cc86ea9e4e2e4328a8b1cf): the module is not served
// by the Go module proxy this project can reach, so its package source (tests
// left out) is kept under third_party/xkafka, unchanged, with its LICENSE.
replace github.com/gojekfarm/xtools/xkafka => ./third_party/xkafka
