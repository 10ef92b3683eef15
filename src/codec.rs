//! The codec of every Capsule contract: prost's, plus the message's
//! declared rules ([`crate::rules`]) and one check of every
//! string in a message before it is decoded — text PostgreSQL refuses
//! (the NUL character) and bytes that are not UTF-8 are INVALID_ARGUMENT
//! naming the field, for every field of every RPC, in this one place
//! instead of in each handler. A message that does not decode at all is
//! INVALID_ARGUMENT too: the caller sent it.
//!
//! The check walks the wire format with the message's descriptor, without
//! building anything; the generated code names this codec
//! (`build.rs`, `codec_path`).

use prost::{
    Message, Name,
    bytes::Buf,
    encoding::{WireType, decode_varint},
};
use prost_reflect::{Kind, MessageDescriptor};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::rpc::FieldViolations;

/// Messages nest at most this deep before the check stops descending
/// (prost refuses deeper ones anyway).
const MAX_DEPTH: usize = 100;

/// prost's codec with the text check on decoding.
pub struct CheckedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(self.0.decoder())
    }
}

/// Checks a message's text, then decodes it with prost.
pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Name + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A decode buffer holds the whole message in one piece.
        if let Some(descriptor) = crate::proto::pool().get_message_by_name(&U::full_name()) {
            check_text(&descriptor, buf.chunk())?;
            crate::rules::check(&descriptor, buf.chunk())?;
        }
        self.0
            .decode(buf)
            .map_err(|status| Status::invalid_argument(format!("the message does not decode: {}", status.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// INVALID_ARGUMENT naming each string field of `message` (encoded in
/// `bytes`) that holds a NUL character or is not UTF-8.
pub fn check_text(message: &MessageDescriptor, bytes: &[u8]) -> Result<(), Status> {
    let mut violations = FieldViolations::new();
    walk(message, bytes, "", 0, &mut violations);
    violations.check()
}

/// Visits the length-delimited fields of one message. Malformed input
/// ends the walk quietly: prost's decoding then says what is wrong.
fn walk(message: &MessageDescriptor, mut bytes: &[u8], prefix: &str, depth: usize, violations: &mut FieldViolations) {
    if depth > MAX_DEPTH {
        return;
    }
    while bytes.has_remaining() {
        let Ok(key) = decode_varint(&mut bytes) else {
            return;
        };
        let Ok(wire_type) = WireType::try_from(key & 0b111) else {
            return;
        };
        let skip = match wire_type {
            WireType::Varint => decode_varint(&mut bytes).map(|_| 0).ok(),
            WireType::SixtyFourBit => Some(8),
            WireType::ThirtyTwoBit => Some(4),
            WireType::LengthDelimited => decode_varint(&mut bytes)
                .ok()
                .and_then(|length| usize::try_from(length).ok()),
            WireType::StartGroup | WireType::EndGroup => None,
        };
        let Some(length) = skip.filter(|length| *length <= bytes.len()) else {
            return;
        };
        let (value, rest) = bytes.split_at(length);
        bytes = rest;
        if wire_type != WireType::LengthDelimited {
            continue;
        }
        let Some(field) = u32::try_from(key >> 3)
            .ok()
            .and_then(|number| message.get_field(number))
        else {
            continue;
        };
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        match field.kind() {
            Kind::String => match std::str::from_utf8(value) {
                Err(_) => violations.add(path, "must be UTF-8 text"),
                Ok(text) if text.contains('\0') => violations.add(path, "must not contain the NUL character"),
                Ok(_) => {}
            },
            Kind::Message(inner) => walk(&inner, value, &path, depth + 1, violations),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::project::v1 as pb;

    fn check<M: Message + Name>(message: &M) -> Vec<String> {
        let descriptor = crate::proto::pool().get_message_by_name(&M::full_name()).unwrap();
        match check_text(&descriptor, &message.encode_to_vec()) {
            Ok(()) => Vec::new(),
            Err(status) => {
                use tonic_types::StatusExt;
                status
                    .get_details_bad_request()
                    .unwrap()
                    .field_violations
                    .into_iter()
                    .map(|violation| violation.field)
                    .collect()
            }
        }
    }

    #[test]
    fn nul_anywhere_in_a_string_is_named_by_its_path() {
        let clean = pb::UpdateProjectSettingsRequest {
            settings: Some(pb::ProjectSettings {
                project_id: "6d8f".into(),
                build_command: "make\tall ünïcödé".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["build_command".into()],
            }),
        };
        assert_eq!(check(&clean), Vec::<String>::new());
        let mut dirty = clean.clone();
        if let Some(settings) = dirty.settings.as_mut() {
            settings.build_command = "make\0".into();
        }
        if let Some(mask) = dirty.update_mask.as_mut() {
            mask.paths.push("x\0".into());
        }
        assert_eq!(check(&dirty), ["settings.build_command", "update_mask.paths"]);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named_and_malformed_input_is_left_to_prost() {
        let descriptor = crate::proto::pool()
            .get_message_by_name("capsule.project.v1.GetProjectRequest")
            .unwrap();
        // Field 1 (project_id), length 2, bytes 0xff 0xfe.
        let status = check_text(&descriptor, &[0x0a, 0x02, 0xff, 0xfe]).unwrap_err();
        assert!(format!("{status:?}").contains("UTF-8"), "{status:?}");
        // A length past the end: not this check's to judge.
        assert!(check_text(&descriptor, &[0x0a, 0x7f, 0x41]).is_ok());
    }
}
