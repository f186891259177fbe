//! Length-prefixed frames on QUIC streams.

use muster_proto::MAX_FRAME;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer announced a {0}-byte frame, over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("stream ended before a whole frame arrived")]
    Truncated,
    #[error("stream error: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream error: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before any byte.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(body)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(body).await?;
    Ok(())
}
