//! The plain transactional API on [`Producer`](crate::Producer) (`begin` / publish /
//! `commit` / `abort`), for services that are not consumers, over the state
//! in `transaction.rs`.

use super::poller::PolledProducer;
use super::transaction::Transactions;
use super::Producer;
use crate::error::Error;

/// The plain transactional API, for services that are not consumers.
impl Producer {
    /// Whether the producer was built with
    /// [`transactional_id`](crate::ProducerBuilder::transactional_id).
    pub fn is_transactional(&self) -> bool {
        self.inner.transactions.is_some()
    }

    /// Begins a transaction (initialising the producer's transactions the
    /// first time, which fences any older instance with the same
    /// `transactional.id` and aborts what it left open). Every message
    /// published from now until [`commit_transaction`](Self::commit_transaction)
    /// or [`abort_transaction`](Self::abort_transaction) — from any clone of
    /// this producer — belongs to the transaction.
    ///
    /// ```no_run
    /// use xkafka::{Message, Producer};
    ///
    /// # async fn run() -> Result<(), xkafka::Error> {
    /// let producer = Producer::builder("ledger")
    ///     .brokers(["127.0.0.1:9092"])
    ///     .transactional_id("ledger-1")
    ///     .error_handler(|err| eprintln!("{err}"))
    ///     .build()?;
    /// producer.begin_transaction().await?;
    /// let sent = async {
    ///     producer.publish(Message::builder("debits").value("-10").build()).await?;
    ///     producer.publish(Message::builder("credits").value("+10").build()).await
    /// };
    /// match sent.await {
    ///     // Both become visible to read_committed readers, or neither.
    ///     Ok(_) => producer.commit_transaction().await?,
    ///     Err(_) => producer.abort_transaction().await?,
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: [`Error::Transactional`] when the producer is not
    /// transactional, a consumer drives its transactions, or one is already
    /// open; [`Error::Kafka`] from librdkafka (for instance
    /// [`Operation::InitTransactions`](crate::Operation::InitTransactions) timing out when no transaction
    /// coordinator answers).
    pub async fn begin_transaction(&self) -> Result<(), Error> {
        self.transaction_step(|txn, client| txn.begin(client)).await
    }

    /// Commits the open transaction: flushes what was published, then makes
    /// it visible to `read_committed` readers, atomically. Retriable errors
    /// are retried within the producer's transaction timeout. After an
    /// error for which [`Error::requires_abort`] is true, call
    /// [`abort_transaction`](Self::abort_transaction); after a fatal one
    /// ([`Error::is_fatal`], e.g. fenced by a newer instance) the producer
    /// cannot transact any more.
    pub async fn commit_transaction(&self) -> Result<(), Error> {
        self.transaction_step(|txn, client| txn.commit(client, txn.timeout))
            .await
    }

    /// Aborts the open transaction: nothing it published becomes visible to
    /// `read_committed` readers. Without an open transaction, does nothing.
    pub async fn abort_transaction(&self) -> Result<(), Error> {
        self.transaction_step(|txn, client| txn.abort(client, txn.timeout))
            .await
    }

    async fn transaction_step<F>(&self, step: F) -> Result<(), Error>
    where
        F: FnOnce(&Transactions, &PolledProducer) -> Result<(), Error> + Send + 'static,
    {
        let txn = self.transactions()?;
        if let Some(group) = txn.owned_by() {
            return Err(Error::Transactional(format!(
                "producer `{}` belongs to the transactional consumer of group `{group}`, which \
                 begins and commits its transactions",
                txn.id
            )));
        }
        if !txn.claim() {
            return Err(Error::Transactional(format!(
                "producer `{}`: another transaction call is still running",
                txn.id
            )));
        }
        let this = self.clone();
        // librdkafka's calls block (up to the transaction timeout): on the
        // blocking pool, not on a runtime worker.
        let result = tokio::task::spawn_blocking(move || {
            let Some(txn) = this.inner.transactions.as_ref() else {
                unreachable!("checked above");
            };
            let result = step(txn, &this.inner.client);
            txn.release();
            result
        })
        .await;
        match result {
            Ok(result) => result,
            Err(join) => {
                txn.release();
                Err(Error::Panicked {
                    place: "a transaction call",
                    message: join.to_string(),
                })
            }
        }
    }

    pub(crate) fn transactions(&self) -> Result<&Transactions, Error> {
        self.inner.transactions.as_ref().ok_or_else(|| {
            Error::Transactional(format!(
                "producer `{}` is not transactional: build it with .transactional_id(...)",
                self.inner.name
            ))
        })
    }

    /// The librdkafka client, for a transactional consumer's poll thread.
    pub(crate) fn client(&self) -> &PolledProducer {
        &self.inner.client
    }
}
