//! A consumer subscribed to a topic that does not exist says so: the error
//! handler is told, naming the topic, and a warning is logged once while
//! the consumer waits for the topic (issue 32 item 4). Before, it printed
//! nothing at all until Ctrl-C.

mod common;

use std::time::Duration;

use common::*;
use xkafka::Decision;

#[tokio::test]
async fn a_missing_topic_reaches_the_error_handler_and_one_warning() {
    let logs = captured_debug_logs();
    let topic = unique("missing");
    let (errors, handler) = recording_error_handler(Decision::Continue);
    let consumer = consumer(&unique("missing-group"), &topic)
        // librdkafka re-reads metadata this often: several rounds within
        // the test's wait, to show that the warning is not repeated.
        .config("topic.metadata.refresh.interval.ms", "1000")
        .error_handler(handler)
        .handler(|_m: xkafka::Message| async { xkafka::Ack::Success })
        .build()
        .expect("consumer");
    let named = {
        let errors = errors.clone();
        let topic = topic.clone();
        move || errors.lock().unwrap().iter().any(|e| e.contains(&topic))
    };
    let probe = named.clone();
    consumer
        .run(async move {
            until(&probe, Duration::from_secs(15)).await;
            // A few more metadata refreshes: the warning must stay single.
            tokio::time::sleep(Duration::from_secs(4)).await;
        })
        .await
        .expect("run");
    let errors = errors.lock().unwrap().clone();
    assert!(
        named(),
        "no error naming {topic} within 15 s of waiting: the error handler got {errors:?}"
    );
    eprintln!("the error handler got {errors:?}");
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&topic) && l.contains("xkafka"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning naming {topic} expected, got {warnings:#?}"
    );
    assert!(
        warnings[0].contains(&format!("xkafka topics create {topic}")),
        "the warning says how to create it: {}",
        warnings[0]
    );
}
