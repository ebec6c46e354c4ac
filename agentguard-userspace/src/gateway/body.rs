//! The response body as the agent receives it: streamed from the upstream, counted, searched for
//! secret values (a hit cuts the stream), and logged once when it ends or is dropped.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{Finish, scan::StreamScan};
use agentguard_common::verdict::ToolVerdict;

/// Errors of a gateway body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed upstream body.
pub struct Logged<B> {
    inner: B,
    finish: Option<Finish>,
    status: u16,
    bytes: u64,
    secrets: Arc<Vec<String>>,
    scan: StreamScan,
    verdict: ToolVerdict,
}

impl<B> Logged<B> {
    /// Wraps `inner`; `finish` logs the record when the body ends.
    pub fn new(inner: B, finish: Finish, status: u16, secrets: Arc<Vec<String>>) -> Self {
        Self {
            inner,
            finish: Some(finish),
            status,
            bytes: 0,
            secrets,
            scan: StreamScan::default(),
            verdict: ToolVerdict::Forwarded,
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f.done(self.status, self.bytes, self.verdict);
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.verdict != ToolVerdict::Forwarded {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.scan.push(data, &this.secrets) {
                        this.verdict = ToolVerdict::SecretInResponse;
                        return Poll::Ready(Some(Err(
                            "agentguard gateway: the response carried a credential; cut".into(),
                        )));
                    }
                    this.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.verdict = ToolVerdict::UpstreamError;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
