//! The request-head parser. No I/O: [`parse`] looks at the bytes read so far.
//!
//! A head is complete at its first blank line (`\r\n\r\n`). Only its request line is read:
//! `GET` or `HEAD`, a target, and a version starting `HTTP/1.`, separated by single spaces.
//! The path is the target up to the first `?`; header lines are ignored. Anything else, or a
//! head that is not UTF-8, is [`Request::Bad`]. The size bound is the reader's
//! ([`crate::MAX_REQUEST`]).

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// The head is not complete yet.
    Incomplete,
    Get {
        path: &'a str,
        head_only: bool,
    },
    /// Not a GET/HEAD, or not HTTP/1.x.
    Bad,
}

/// Parses a request head from the bytes read so far.
pub fn parse(bytes: &[u8]) -> Request<'_> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Request::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&bytes[..end]) else {
        return Request::Bad;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let head_only = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Request::Bad,
    };
    match (target, version) {
        (Some(t), Some(v)) if v.starts_with("HTTP/1.") && parts.next().is_none() => Request::Get {
            path: t.split('?').next().unwrap_or(t),
            head_only,
        },
        _ => Request::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_incomplete_until_its_blank_line() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Request::Incomplete
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Get {
                path: "/metrics",
                head_only: false
            }
        );
    }

    #[test]
    fn only_get_and_head_over_http_1_are_served() {
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET /metrics SPDY/3\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET\r\n\r\n"), Request::Bad);
        assert_eq!(
            parse(b"HEAD /healthz HTTP/1.0\r\n\r\n"),
            Request::Get {
                path: "/healthz",
                head_only: true
            }
        );
    }

    #[test]
    fn a_head_that_is_not_utf8_or_has_extra_words_is_bad() {
        assert_eq!(parse(b"GET /\xff HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET / HTTP/1.1 x\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET  / HTTP/1.1\r\n\r\n"), Request::Bad);
    }
}
