//! A service the gateway has no code for is served over REST from its
//! `google.api.http` annotations alone.

use capsule::testing;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

mod echo {
    tonic::include_proto!("test.echo.v1");
}

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

struct Echo;

#[tonic::async_trait]
impl echo::echo_service_server::EchoService for Echo {
    async fn echo(&self, request: Request<echo::EchoRequest>) -> Result<Response<echo::EchoReply>, Status> {
        let request = request.into_inner();
        if request.text == "fail" {
            return Err(Status::failed_precondition("the echo refuses"));
        }
        let text = if request.upper {
            request.text.to_uppercase()
        } else {
            request.text
        };
        let echoes = vec![text; usize::try_from(request.times.max(1)).unwrap_or(1)];
        Ok(Response::new(echo::EchoReply {
            count: i64::try_from(echoes.len()).unwrap_or(0),
            echoes,
        }))
    }

    async fn shout(&self, request: Request<echo::ShoutRequest>) -> Result<Response<echo::EchoReply>, Status> {
        let request = request.into_inner();
        let options = request.options.unwrap_or_default();
        let text = format!(
            "{}{}",
            request.text.to_uppercase(),
            "!".repeat(usize::try_from(options.volume).unwrap_or(0))
        );
        let echoes = std::iter::once(text).chain(options.suffixes).collect::<Vec<_>>();
        Ok(Response::new(echo::EchoReply {
            count: i64::try_from(echoes.len()).unwrap_or(0),
            echoes,
        }))
    }
}

#[tokio::test]
async fn an_annotated_rpc_is_served_with_no_gateway_code() {
    let grpc = testing::free_listener().await;
    let grpc_addr = grpc.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(echo::echo_service_server::EchoServiceServer::new(Echo))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                serving.cancelled_owned(),
            )
            .await
    });
    let echo_channel = capsule::trace::traced(testing::channel(grpc_addr).await);
    let nowhere = capsule::tls::channel("http://127.0.0.1:9").unwrap();
    let backends = capsule_gateway::Backends {
        auth: nowhere.clone(),
        project: nowhere.clone(),
        deploy: nowhere.clone(),
        gateway: nowhere,
        extra: vec![("test.echo.v1".to_owned(), echo_channel)],
    };
    let http = testing::free_listener().await;
    let base = format!("http://{}", http.local_addr().unwrap());
    let edge = capsule_gateway::EdgeConfig::from_source(&|_: &str| None).unwrap();
    tokio::spawn(capsule_gateway::serve_rest(
        http,
        DESCRIPTORS,
        backends,
        "http://127.0.0.1:9",
        edge,
        stop.clone(),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let client = reqwest::Client::new();

    let reply: Value = client
        .get(format!("{base}/v1/echo/hello%20world?times=3&upper=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({"echoes": ["HELLO WORLD", "HELLO WORLD", "HELLO WORLD"], "count": "3"})
    );

    let shouted: Value = client
        .post(format!("{base}/v1/echo/hey:shout"))
        .json(&json!({"volume": 2, "suffixes": ["you", "there"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shouted["echoes"], json!(["HEY!!", "you", "there"]));

    // FAILED_PRECONDITION: refused for the state of things, 409.
    let failed = client.get(format!("{base}/v1/echo/fail")).send().await.unwrap();
    assert_eq!(failed.status(), reqwest::StatusCode::CONFLICT);
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["code"], 9);
    assert_eq!(body["message"], "the echo refuses");

    let wrong = client.get(format!("{base}/v1/echo/x?times=many")).send().await.unwrap();
    assert_eq!(wrong.status(), reqwest::StatusCode::BAD_REQUEST);
    let document: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["paths"]["/v1/echo/{text}"]["get"].is_object());
    stop.cancel();
}
