//! The escape hatch to librdkafka: everything here names a type of the
//! `rdkafka` crate xkafka is built on, so code using it moves with rdkafka's
//! versions, not with xkafka's. The rest of xkafka's API is its own.
//!
//! What it is for: matching a librdkafka error code
//! ([`Error::kafka_code`](crate::Error::kafka_code)), reading a topic with a
//! raw rdkafka client and handing its records to xkafka code
//! ([`owned_message`]), and, with the `testing` feature, driving librdkafka's
//! mock cluster beyond what [`EmbeddedCluster`](crate::mock::EmbeddedCluster)
//! wraps ([`MockClusterExt`]).
//!
//! ```
//! use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
//!
//! fn is_auth(err: &xkafka::Error) -> bool {
//!     err.kafka_code() == Some(RDKafkaErrorCode::Authentication)
//! }
//! # let _ = is_auth;
//! ```

/// The `rdkafka` crate, at the version xkafka is built with.
pub use rdkafka;

use crate::Message;

/// An owned [`Message`] copied from a record a raw rdkafka consumer
/// fetched: key, value, headers, partition, offset and timestamp — what
/// xkafka's consumers hand their handlers (without the group). Header
/// names that are not UTF-8 are decoded lossily, where rdkafka's own
/// accessors would panic; values are kept byte for byte. For tools that
/// read topics with rdkafka directly (the `xkafka` command line).
pub fn owned_message(record: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    crate::convert::from_borrowed(record)
}

#[cfg(feature = "testing")]
pub use mock_ext::MockClusterExt;

#[cfg(feature = "testing")]
mod mock_ext {
    use rdkafka::producer::Producer as _;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use crate::mock::EmbeddedCluster;
    use crate::Error;

    /// librdkafka's mock cluster under an
    /// [`EmbeddedCluster`](crate::mock::EmbeddedCluster), in rdkafka's
    /// terms: request errors, request counts, and the mock itself.
    pub trait MockClusterExt: sealed::Sealed {
        /// Fails the next requests of kind `api_key`, one error per request
        /// in the order given, whichever client sends them (the errors are
        /// cluster-wide). The whole request fails: a Produce request
        /// carrying several partitions' batches fails for all of them, and
        /// nothing is written. `RD_KAFKA_RESP_ERR__TRANSPORT` makes the
        /// broker close the connection instead of answering.
        fn request_errors(
            &self,
            api_key: RDKafkaApiKey,
            errors: &[RDKafkaRespErr],
        ) -> Result<(), Error>;

        /// How many requests of kind `api_key` the brokers received since
        /// [`EmbeddedCluster::start_request_tracking`] (0 when not
        /// tracking).
        fn requests(&self, api_key: RDKafkaApiKey) -> usize;

        /// The underlying rdkafka mock, for fault injection xkafka does not
        /// wrap.
        fn with_mock<T>(
            &self,
            f: impl FnOnce(
                &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
            ) -> rdkafka::error::KafkaResult<T>,
        ) -> Result<T, Error>;
    }

    mod sealed {
        /// Only [`crate::mock::EmbeddedCluster`] has a mock cluster.
        pub trait Sealed {}
        impl Sealed for crate::mock::EmbeddedCluster {}
    }

    impl MockClusterExt for EmbeddedCluster {
        fn request_errors(
            &self,
            api_key: RDKafkaApiKey,
            errors: &[RDKafkaRespErr],
        ) -> Result<(), Error> {
            EmbeddedCluster::on_mock(self, |m| {
                m.request_errors(api_key, errors);
                Ok(())
            })
        }

        #[allow(unsafe_code)]
        fn requests(&self, api_key: RDKafkaApiKey) -> usize {
            use rdkafka::bindings as rd;
            let wanted = i16::from(api_key);
            // SAFETY: the client is alive; a null mock cluster is checked.
            // `rd_kafka_mock_get_requests` returns `count` copies (or null
            // when there are none) that we own and free with
            // `rd_kafka_mock_request_destroy_array`.
            unsafe {
                let mcluster =
                    rd::rd_kafka_handle_mock_cluster(self.client().client().native_ptr());
                if mcluster.is_null() {
                    return 0;
                }
                let mut count = 0usize;
                let requests = rd::rd_kafka_mock_get_requests(mcluster, &mut count);
                if requests.is_null() {
                    return 0;
                }
                let matching = (0..count)
                    .filter(|&i| rd::rd_kafka_mock_request_api_key(*requests.add(i)) == wanted)
                    .count();
                rd::rd_kafka_mock_request_destroy_array(requests, count);
                matching
            }
        }

        fn with_mock<T>(
            &self,
            f: impl FnOnce(
                &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
            ) -> rdkafka::error::KafkaResult<T>,
        ) -> Result<T, Error> {
            EmbeddedCluster::on_mock(self, f)
        }
    }
}
