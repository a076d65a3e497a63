// go-xkafka: Go xkafka (github.com/gojekfarm/xtools/xkafka) measured beside
// the Rust xkafka by crates/xkafka-bench, on the same broker, topics and
// settings. One scenario per invocation; the result is one JSON line on
// stdout (diagnostics go to stderr).
//
//	go-xkafka -brokers 127.0.0.1:9192 -topic bench-100b-1-0 -scenario consume_seq -messages 102000
//
// Scenarios (as the Rust side's; see crates/xkafka-bench/src/ours.rs):
//
//	consume_seq         Consumer, no-op handler that acks Success
//	consume_batch       BatchConsumer, batches of 1,000, 10 ms batch timeout
//	consume_conc16_1ms  Consumer with Concurrency(16), handler sleeps 1 ms
//	consume_conc_1ms    the same with Concurrency(-concurrency), for the
//	                    bench's concurrency sweep (N = 4, 16, 64)
//	consume_seq_1ms     Consumer, handler sleeps 1 ms (the sequential rate the
//	                    16-way one is compared with: how long a 1 ms sleep
//	                    lasts differs between Go and tokio)
//	publish_sync        Producer.Publish from 64 goroutines, N messages in all
//	publish_async       Producer.AsyncPublish + DeliveryCallback
//
// Consumers are timed from message N/10 (the first tenth is a warm-up:
// librdkafka's start-up fetches) to the N-th; publish_async
// from the first send (after one acknowledged warm-up message) to the N-th
// delivery report; publish_sync from the start of the 64 goroutines to the end
// of the last Publish. The rate is the timed messages over the time: N - N/10
// for consumers, N-1 for publish_async, N for publish_sync, as on the Rust
// side.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/gojekfarm/xtools/xkafka"
)

// Versions, for the report (the module versions are pinned in go.mod).
const (
	goXkafkaVersion         = "v0.11.1"
	confluentKafkaGoVersion = "v2.12.0"
)

// runTimeout bounds a run, as RUN_TIMEOUT does on the Rust side.
const runTimeout = 120 * time.Second

type result struct {
	Scenario   string  `json:"scenario"`
	Messages   int64   `json:"messages"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	// TimedMessages: the messages the timed span covers (consumers leave
	// the first tenth out, see newSteadyClock).
	TimedMessages int64 `json:"timed_messages"`
	// ElapsedSecs is the timed span (see the package comment).
	ElapsedSecs float64 `json:"elapsed_secs"`
	// CPU of the whole process (getrusage RUSAGE_SELF), start-up included.
	CPUUserSecs float64 `json:"cpu_user_secs"`
	CPUSysSecs  float64 `json:"cpu_sys_secs"`
	// CPU (user+sys) of the process within the timed span only.
	CPUWindowSecs    float64 `json:"cpu_window_secs"`
	WallSecs         float64 `json:"wall_secs"`
	GoXkafka         string  `json:"go_xkafka"`
	ConfluentKafkaGo string  `json:"confluent_kafka_go"`
	Librdkafka       string  `json:"librdkafka"`
	GoVersion        string  `json:"go_version"`
}

func cpuSecs() (user, sys float64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime), tv(ru.Stime)
}

// clock counts messages and remembers when the first and the target-th were
// counted, and the process CPU at both points.
type clock struct {
	target int64
	// from: the count whose tick starts the clock (1: the first message);
	// countedAtStart: the count then (a batch may cross from).
	from           int64
	countedAtStart int64
	count          atomic.Int64
	mu             sync.Mutex
	first          time.Time
	last           time.Time
	cpuFirst       float64
	cpuLast        float64
	done           chan struct{}
}

func newClock(target int64) *clock {
	return &clock{target: target, from: 1, done: make(chan struct{})}
}

// newSteadyClock: a consumer's clock, started at message target/10 so that
// librdkafka's start-up fetches are not timed (as the Rust side's
// Clock::steady).
func newSteadyClock(target int64) *clock {
	c := newClock(target)
	c.from = max(target/warmUpShare, 1)
	return c
}

// warmUpShare: consumers leave the first 1/warmUpShare of the messages out
// of the timed span.
const warmUpShare = 10

func (c *clock) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first.IsZero() {
		c.first = time.Now()
		u, s := cpuSecs()
		c.cpuFirst = u + s
	}
}

func (c *clock) tick(n int64) {
	now := c.count.Add(n)
	before := now - n
	if before < c.from && now >= c.from {
		c.mu.Lock()
		if c.first.IsZero() {
			c.countedAtStart = now
		}
		c.mu.Unlock()
		c.start()
	}
	if now >= c.target && before < c.target {
		c.mu.Lock()
		c.last = time.Now()
		u, s := cpuSecs()
		c.cpuLast = u + s
		c.mu.Unlock()
		close(c.done)
	}
}

// wait blocks until the target is reached or the run timeout passes.
func (c *clock) wait() error {
	select {
	case <-c.done:
		return nil
	case <-time.After(runTimeout):
		return fmt.Errorf("only %d of %d messages after %s", c.count.Load(), c.target, runTimeout)
	}
}

// timing: the timed seconds, the CPU seconds spent within them, and the
// messages they cover.
type timing struct {
	secs, cpu float64
	messages  int64
}

// span returns the timing of the run: the messages after the one that
// started the clock (a publisher's explicit start times all but the first,
// as the Rust side).
func (c *clock) span() timing {
	c.mu.Lock()
	defer c.mu.Unlock()
	secs := c.last.Sub(c.first).Seconds()
	if secs < 1e-9 {
		secs = 1e-9
	}
	return timing{secs: secs, cpu: c.cpuLast - c.cpuFirst, messages: c.target - max(c.countedAtStart, 1)}
}

type options struct {
	brokers      string
	topic        string
	scenario     string
	messages     int64
	group        string
	fetchWaitMs  int
	batchSize    int
	batchTimeout time.Duration
	concurrency  int
	inFlight     int
	valueSize    int
	// consumerConfig: extra librdkafka settings of the consumers (-consumer-config).
	consumerConfig map[string]string
}

func main() {
	var o options
	flag.StringVar(&o.brokers, "brokers", "127.0.0.1:9192", "bootstrap servers")
	flag.StringVar(&o.topic, "topic", "", "topic to consume from or publish to")
	flag.StringVar(&o.scenario, "scenario", "", "consume_seq | consume_batch | consume_conc16_1ms | consume_conc_1ms | consume_seq_1ms | publish_sync | publish_async")
	flag.Int64Var(&o.messages, "messages", 0, "messages to consume or publish")
	flag.StringVar(&o.group, "group", "", "consumer group id (default: a fresh one)")
	flag.IntVar(&o.fetchWaitMs, "fetch-wait-ms", -1, "fetch.wait.max.ms (default: 10 for the 1 ms handlers, 500 otherwise, as the Rust side)")
	flag.IntVar(&o.batchSize, "batch-size", 1000, "BatchSize of consume_batch")
	flag.DurationVar(&o.batchTimeout, "batch-timeout", 10*time.Millisecond, "BatchTimeout of consume_batch")
	flag.IntVar(&o.concurrency, "concurrency", 16, "Concurrency of consume_conc16_1ms and consume_conc_1ms")
	flag.IntVar(&o.inFlight, "in-flight", 64, "goroutines of publish_sync")
	flag.IntVar(&o.valueSize, "value-size", 100, "bytes per published value")
	o.consumerConfig = map[string]string{}
	flag.Func("consumer-config", "key=value: an extra librdkafka setting of the consumers (repeatable), e.g. fetch.queue.backoff.ms=10", func(kv string) error {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("want key=value, got %q", kv)
		}
		o.consumerConfig[k] = v
		return nil
	})
	flag.Parse()
	if o.topic == "" || o.scenario == "" || o.messages <= 0 {
		fail(errors.New("-topic, -scenario and -messages > 0 are required"))
	}
	if o.group == "" {
		o.group = fmt.Sprintf("go-xkafka-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	if o.fetchWaitMs < 0 {
		o.fetchWaitMs = 500
		switch o.scenario {
		case "consume_conc16_1ms", "consume_conc_1ms", "consume_seq_1ms":
			o.fetchWaitMs = 10
		}
	}

	started := time.Now()
	var (
		t   timing
		err error
	)
	switch o.scenario {
	case "consume_seq":
		t, err = consume(o, 1, 0)
	case "consume_conc16_1ms", "consume_conc_1ms":
		t, err = consume(o, o.concurrency, time.Millisecond)
	case "consume_seq_1ms":
		t, err = consume(o, 1, time.Millisecond)
	case "consume_batch":
		t, err = consumeBatch(o)
	case "publish_async":
		t, err = publishAsync(o)
	case "publish_sync":
		t, err = publishSync(o)
	default:
		err = fmt.Errorf("unknown scenario %q", o.scenario)
	}
	if err != nil {
		fail(err)
	}
	rate := float64(t.messages) / t.secs
	user, sys := cpuSecs()
	_, librdkafka := kafka.LibraryVersion()
	out, _ := json.Marshal(result{
		Scenario:         o.scenario,
		Messages:         o.messages,
		MsgsPerSec:       rate,
		TimedMessages:    t.messages,
		ElapsedSecs:      t.secs,
		CPUUserSecs:      user,
		CPUSysSecs:       sys,
		CPUWindowSecs:    t.cpu,
		WallSecs:         time.Since(started).Seconds(),
		GoXkafka:         goXkafkaVersion,
		ConfluentKafkaGo: confluentKafkaGoVersion,
		Librdkafka:       librdkafka,
		GoVersion:        runtime.Version(),
	})
	fmt.Println(string(out))
}

func fail(err error) {
	out, _ := json.Marshal(map[string]string{"error": err.Error()})
	fmt.Println(string(out))
	fmt.Fprintln(os.Stderr, "go-xkafka:", err)
	os.Exit(1)
}

// quiet logs an error and goes on (as the Rust side's error handler, which
// returns Decision::Continue).
func quiet(err error) error {
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-xkafka consumer error:", err)
	}
	return nil
}

func consumerOptions(o options) []xkafka.ConsumerOption {
	config := xkafka.ConfigMap{
		"auto.offset.reset": "earliest",
		"fetch.wait.max.ms": o.fetchWaitMs,
	}
	for k, v := range o.consumerConfig {
		config[k] = v
	}
	return []xkafka.ConsumerOption{
		xkafka.Brokers{o.brokers},
		xkafka.Topics{o.topic},
		config,
		xkafka.ErrorHandler(quiet),
		// The library's default is 10 s; the raw Rust loop polls for 100 ms.
		// It matters only while nothing arrives (and lets the batch timer run).
		xkafka.PollTimeout(100 * time.Millisecond),
		// Run waits this long before closing the client; it is outside the
		// timed span anyway.
		xkafka.ShutdownTimeout(10 * time.Millisecond),
	}
}

// consume runs a Consumer until it handled o.messages messages.
func consume(o options, concurrency int, sleep time.Duration) (timing, error) {
	c := newSteadyClock(o.messages)
	handler := xkafka.HandlerFunc(func(ctx context.Context, m *xkafka.Message) error {
		c.tick(1)
		if sleep > 0 {
			time.Sleep(sleep)
		}
		m.AckSuccess()
		return nil
	})
	opts := consumerOptions(o)
	if concurrency > 1 {
		opts = append(opts, xkafka.Concurrency(concurrency))
	}
	consumer, err := xkafka.NewConsumer(o.group, handler, opts...)
	if err != nil {
		return timing{}, err
	}
	return runUntil(c, consumer.Run)
}

// consumeBatch runs a BatchConsumer until its batches held o.messages messages.
func consumeBatch(o options) (timing, error) {
	c := newSteadyClock(o.messages)
	handler := xkafka.BatchHandlerFunc(func(ctx context.Context, b *xkafka.Batch) error {
		c.tick(int64(len(b.Messages)))
		b.AckSuccess()
		return nil
	})
	opts := append(consumerOptions(o),
		xkafka.BatchSize(o.batchSize),
		xkafka.BatchTimeout(o.batchTimeout))
	consumer, err := xkafka.NewBatchConsumer(o.group, handler, opts...)
	if err != nil {
		return timing{}, err
	}
	return runUntil(c, consumer.Run)
}

// runUntil runs a consumer until the clock's target is reached, then stops it.
func runUntil(c *clock, run func(context.Context) error) (timing, error) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- run(ctx) }()
	waited := c.wait()
	cancel()
	runErr := <-stopped
	if waited != nil {
		return timing{}, waited
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		fmt.Fprintln(os.Stderr, "go-xkafka: consumer stopped with:", runErr)
	}
	return c.span(), nil
}

// producerOptions: linger.ms=5, acks=all, enable.idempotence=true, as both
// Rust sides. Go xkafka sets "default.topic.config" to acks=1 and the
// consistent_random partitioner (librdkafka's default, which the Rust sides
// use); that sub-map replaces the default topic configuration wholesale, in
// map order, so acks=all is given there as well.
func producerOptions(o options, extra ...xkafka.ProducerOption) []xkafka.ProducerOption {
	return append([]xkafka.ProducerOption{
		xkafka.Brokers{o.brokers},
		xkafka.ConfigMap{
			"linger.ms":          5,
			"acks":               "all",
			"enable.idempotence": true,
			"default.topic.config": kafka.ConfigMap{
				"acks":        "all",
				"partitioner": "consistent_random",
			},
		},
		xkafka.ErrorHandler(func(err error) error {
			fmt.Fprintln(os.Stderr, "go-xkafka producer error:", err)
			return nil
		}),
		xkafka.ShutdownTimeout(10 * time.Second),
	}, extra...)
}

func payload(size int) []byte {
	v := make([]byte, size)
	for i := range v {
		v[i] = byte('a' + i%26)
	}
	return v
}

// keys are k0 … k999, made once (the Rust side formats one per message).
func keys() [][]byte {
	k := make([][]byte, 1000)
	for i := range k {
		k[i] = []byte("k" + strconv.Itoa(i))
	}
	return k
}

// publishAsync: AsyncPublish with a DeliveryCallback, timed from the first
// send to the N-th delivery report.
func publishAsync(o options) (timing, error) {
	c := newClock(o.messages)
	var counting atomic.Bool
	var failed atomic.Int64
	producer, err := xkafka.NewProducer("bench-go", producerOptions(o,
		xkafka.DeliveryCallback(func(m *xkafka.Message) {
			if m.Status != xkafka.Success {
				failed.Add(1)
			}
			if counting.Load() {
				c.tick(1)
			}
		}))...)
	if err != nil {
		return timing{}, err
	}
	// Delivery reports of AsyncPublish arrive on the events channel, which
	// Start drains (and calls the callback).
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan struct{})
	go func() { _ = producer.Start(ctx); close(events) }()
	value := payload(o.valueSize)
	// Warm up as the Rust sides do: connected, producer id, metadata.
	if err := producer.Publish(ctx, &xkafka.Message{Topic: o.topic, Value: value}); err != nil {
		cancel()
		return timing{}, fmt.Errorf("warm-up: %w", err)
	}
	counting.Store(true)
	k := keys()
	c.start()
	for i := int64(0); i < o.messages; i++ {
		msg := &xkafka.Message{Topic: o.topic, Key: k[i%1000], Value: value}
		if err := producer.AsyncPublish(ctx, msg); err != nil {
			cancel()
			return timing{}, err
		}
	}
	waited := c.wait()
	cancel()
	<-events
	producer.Close()
	if waited != nil {
		return timing{}, waited
	}
	if n := failed.Load(); n > 0 {
		return timing{}, fmt.Errorf("%d deliveries failed", n)
	}
	return c.span(), nil
}

// publishSync: Publish (which waits for the delivery report) from 64
// goroutines sharing N messages.
func publishSync(o options) (timing, error) {
	producer, err := xkafka.NewProducer("bench-go-sync", producerOptions(o)...)
	if err != nil {
		return timing{}, err
	}
	value := payload(o.valueSize)
	k := keys()
	ctx := context.Background()
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	u0, s0 := cpuSecs()
	started := time.Now()
	for g := 0; g < o.inFlight; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= o.messages {
					return
				}
				msg := &xkafka.Message{Topic: o.topic, Key: k[i%1000], Value: value}
				if err := producer.Publish(ctx, msg); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(started).Seconds()
	u1, s1 := cpuSecs()
	producer.Close()
	if e := firstErr.Load(); e != nil {
		return timing{}, fmt.Errorf("publish failed: %w", *e)
	}
	return timing{secs: secs, cpu: (u1 + s1) - (u0 + s0), messages: o.messages}, nil
}
