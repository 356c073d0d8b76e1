//! Raw gRPC calls: any bytes to any method, to send what no generated
//! client would (the hostile-input and corpus tests).

/// Raw bytes as a gRPC message.
#[derive(Clone, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn client(
    url: &str,
) -> Result<tonic::client::Grpc<tonic::transport::Channel>, tonic::Status> {
    let channel = shepherd_testkit::channel(url)
        .await
        .map_err(|err| tonic::Status::unknown(err.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|err| tonic::Status::unknown(err.to_string()))?;
    Ok(grpc)
}

fn path(path: &str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::try_from(path).expect("a valid path")
}

/// A unary call with `body` as the request; OK (with "accepted") when the
/// service answered.
pub async fn raw_call(url: &str, method: &str, body: Vec<u8>) -> tonic::Status {
    raw_call_as(url, method, body, None).await
}

/// `body` as a request presenting `token` (None: no credential).
fn request(body: Vec<u8>, token: Option<&str>) -> tonic::Request<Vec<u8>> {
    let mut request = tonic::Request::new(body);
    if let Some(Ok(value)) = token.map(|token| format!("Bearer {token}").parse()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Like `raw_call`, with the caller's token.
pub async fn raw_call_as(
    url: &str,
    method: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> tonic::Status {
    let mut grpc = match client(url).await {
        Ok(grpc) => grpc,
        Err(status) => return status,
    };
    match grpc
        .unary(request(body, token), path(method), RawCodec)
        .await
    {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(status) => status,
    }
}

/// A server-streaming call: the status of the call, or of its first
/// message (OK if one arrived).
pub async fn raw_stream_call(url: &str, method: &str, body: Vec<u8>) -> tonic::Status {
    raw_stream_call_as(url, method, body, None).await
}

/// Like `raw_stream_call`, with the caller's token.
pub async fn raw_stream_call_as(
    url: &str,
    method: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> tonic::Status {
    let mut grpc = match client(url).await {
        Ok(grpc) => grpc,
        Err(status) => return status,
    };
    let response = grpc
        .server_streaming(request(body, token), path(method), RawCodec)
        .await;
    match response {
        Ok(response) => first_message(response.into_inner()).await,
        Err(status) => status,
    }
}

/// The first message of a stream as a status (a stream that stays silent
/// for 2 s counts as accepted: it is waiting for events).
async fn first_message(mut stream: tonic::Streaming<Vec<u8>>) -> tonic::Status {
    match tokio::time::timeout(std::time::Duration::from_secs(2), stream.message()).await {
        Ok(Ok(_)) | Err(_) => tonic::Status::ok("accepted"),
        Ok(Err(status)) => status,
    }
}
