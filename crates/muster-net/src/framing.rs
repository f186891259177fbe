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
    let len = frame_length(len)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(body)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// The body length a frame header announces, refused when over [`MAX_FRAME`].
pub fn frame_length(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// A whole frame's body and the bytes after it.
pub type SplitFrame<'a> = (&'a [u8], &'a [u8]);

/// Splits the first whole frame off `buf`, or `None` when more bytes are needed.
pub fn split_frame(buf: &[u8]) -> Result<Option<SplitFrame<'_>>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = frame_length(*header)?;
    Ok((rest.len() >= len).then(|| rest.split_at(len)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_whole_wait_for_more_and_refuse_oversize() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"abcXY");
        let (body, rest) = split_frame(&buf).unwrap().unwrap();
        assert_eq!((body, rest), (&b"abc"[..], &b"XY"[..]));
        assert!(split_frame(&buf[..5]).unwrap().is_none());
        assert!(split_frame(&buf[..2]).unwrap().is_none());
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(split_frame(&huge), Err(FrameError::TooLarge(_))));
    }
}
