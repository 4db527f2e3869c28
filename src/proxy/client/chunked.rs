//! Decoding `Transfer-Encoding: chunked` (RFC 9112 §7.1) from whatever has been read so
//! far. Data is handed on as soon as it arrives, not when its chunk is complete: an SSE
//! event the upstream flushed must reach the client now, whatever chunk sizes it chose.
//! Chunk extensions and trailers are read and ignored, but trailer lines must be well
//! formed (`name: value`): a malformed one means the framing is not what it seems.

use std::io;

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line extension, and longest trailer section, accepted: they carry
/// nothing keygate uses, and a peer sending them without end must not keep us reading.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// 16 hex digits fill a u64; more is a size no one sends.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` read so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CRLF.
    SizeSpace {
        size: u64,
    },
    /// A chunk extension, up to CR.
    Extension {
        size: u64,
        len: usize,
    },
    /// LF closing the size line.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to come.
    Data {
        remaining: u64,
    },
    /// CR, then LF, after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or the final empty line.
    TrailerStart {
        len: usize,
    },
    /// A trailer field's name, up to `:`.
    TrailerName {
        len: usize,
    },
    /// A trailer field's value, up to CR.
    Trailer {
        len: usize,
    },
    /// LF after a trailer line's CR.
    TrailerLf {
        len: usize,
    },
    /// LF after the final empty line's CR.
    EndLf,
    Done,
}

/// What `ChunkedDecoder::decode` made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    /// Everything buffered was consumed; read more.
    NeedMore,
    /// The last chunk and the trailers have been read: the body is complete.
    Done,
}

#[derive(Debug)]
pub(super) struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked answer: {what}"),
    )
}

impl ChunkedDecoder {
    /// Consumes framing bytes from the front of `buf` until it can return data, needs
    /// more bytes, or reaches the end. Data is split off `buf` without copying.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, io::Error> {
        loop {
            if let State::Data { remaining } = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == State::Done {
                return Ok(Decoded::Done);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
        }
    }

    /// The state after one framing byte.
    fn step(&self, byte: u8) -> Result<State, io::Error> {
        Ok(match self.state {
            State::Size { size, digits } => match (hex_value(byte), byte) {
                (Some(value), _) => {
                    if digits == MAX_SIZE_DIGITS {
                        return Err(invalid("chunk size too large"));
                    }
                    State::Size {
                        size: size << 4 | u64::from(value),
                        digits: digits + 1,
                    }
                }
                (None, _) if digits == 0 => return Err(invalid("chunk size is not hex")),
                (None, b' ' | b'\t') => State::SizeSpace { size },
                (None, b';') => State::Extension { size, len: 0 },
                (None, b'\r') => State::SizeLf { size },
                (None, _) => return Err(invalid("chunk size is not hex")),
            },
            State::SizeSpace { size } => match byte {
                b' ' | b'\t' => State::SizeSpace { size },
                b';' => State::Extension { size, len: 0 },
                b'\r' => State::SizeLf { size },
                _ => return Err(invalid("unexpected byte after the chunk size")),
            },
            State::Extension { size, len } => match byte {
                b'\r' => State::SizeLf { size },
                b'\n' | 0 => return Err(invalid("bad byte in a chunk extension")),
                _ if len >= MAX_EXTENSION => return Err(invalid("chunk extension too long")),
                _ => State::Extension { size, len: len + 1 },
            },
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::TrailerStart { len: 0 },
                b'\n' => State::Data { remaining: size },
                _ => return Err(invalid("chunk size line not ended by CRLF")),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(invalid("chunk data not followed by CRLF")),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(invalid("chunk data not followed by CRLF")),
            },
            State::TrailerStart { len } => match byte {
                b'\r' => State::EndLf,
                _ if is_token_byte(byte) => State::TrailerName { len: len + 1 },
                _ => return Err(invalid("a trailer line is not a field")),
            },
            State::TrailerName { len } => match byte {
                _ if len >= MAX_TRAILERS => return Err(invalid("trailers too long")),
                b':' => State::Trailer { len: len + 1 },
                _ if is_token_byte(byte) => State::TrailerName { len: len + 1 },
                _ => return Err(invalid("a trailer line is not a field")),
            },
            // RFC 9110 §5.5: field values are visible characters, spaces and tabs (and
            // obs-text), never other controls.
            State::Trailer { len } => match byte {
                _ if len >= MAX_TRAILERS => return Err(invalid("trailers too long")),
                b'\r' => State::TrailerLf { len: len + 1 },
                b'\t' => State::Trailer { len: len + 1 },
                0..=0x1f | 0x7f => return Err(invalid("bad byte in the trailers")),
                _ => State::Trailer { len: len + 1 },
            },
            State::TrailerLf { len } => match byte {
                b'\n' => State::TrailerStart { len: len + 1 },
                _ => return Err(invalid("trailer line not ended by CRLF")),
            },
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return Err(invalid("last chunk not ended by CRLF")),
            },
            // `decode` handles these without consuming framing bytes.
            State::Data { .. } | State::Done => self.state,
        })
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}
