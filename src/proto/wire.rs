//! Encoded descriptors read field by field, as they are on the wire: a
//! descriptor's options keep their extensions (permissions, HTTP rules,
//! validation rules) only when nothing decodes them into prost's types on
//! the way. Shared by `build.rs` (the set without source info) and
//! [`super::pool`] (the files of the services a process serves).

use prost::encoding::{WireType, decode_key, decode_varint};

/// `FileDescriptorSet.file`, the set's one field.
pub const FILE: u32 = 1;

/// A file of a set: as the set holds it (key included), and its
/// `FileDescriptorProto`'s own bytes.
pub type File<'a> = (&'a [u8], &'a [u8]);

/// The files of an encoded `FileDescriptorSet`.
pub fn files(set: &[u8]) -> Result<Vec<File<'_>>, String> {
    fields(set)?
        .into_iter()
        .map(|(number, encoded)| match number {
            FILE => Ok((encoded, length_delimited(encoded)?)),
            other => Err(format!("field {other} in a FileDescriptorSet")),
        })
        .collect()
}

/// Each field's number and its bytes as encoded (key included).
pub type Fields<'a> = Vec<(u32, &'a [u8])>;

/// The fields of an encoded message.
pub fn fields(message: &[u8]) -> Result<Fields<'_>, String> {
    let mut fields = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let start = rest;
        let (number, wire_type) = decode_key(&mut rest).map_err(|err| err.to_string())?;
        let size = match wire_type {
            WireType::Varint => {
                decode_varint(&mut rest).map_err(|err| err.to_string())?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => length(&mut rest)?,
            other => return Err(format!("wire type {other:?} in a descriptor")),
        };
        rest = rest.get(size..).ok_or("a descriptor field runs past its message")?;
        fields.push((number, &start[..start.len() - rest.len()]));
    }
    Ok(fields)
}

/// The payload of a length-delimited field given with its key.
pub fn length_delimited(field: &[u8]) -> Result<&[u8], String> {
    let mut rest = field;
    let (number, wire_type) = decode_key(&mut rest).map_err(|err| err.to_string())?;
    if wire_type != WireType::LengthDelimited {
        return Err(format!("field {number} of a descriptor is not a message"));
    }
    let size = length(&mut rest)?;
    Ok(rest.get(..size).ok_or("a descriptor field runs past its message")?)
}

fn length(rest: &mut &[u8]) -> Result<usize, String> {
    let size = decode_varint(rest).map_err(|err| err.to_string())?;
    usize::try_from(size).map_err(|err| err.to_string())
}
