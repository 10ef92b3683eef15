//! How the user commands print: aligned columns for people, the API's
//! JSON with `--json`, and errors in one line.

use prost_reflect::DynamicMessage;

/// A message of the API's contracts.
pub trait Message: prost::Message + prost::Name {}

impl<M: prost::Message + prost::Name> Message for M {}

/// Where a command's answer goes.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// One message: `text` for people, the message as JSON with `--json`.
    pub fn one(&self, message: &impl Message, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        match self.json {
            true => println!("{}", json(message)?),
            false => println!("{}", text()),
        }
        Ok(())
    }

    /// A list the API answered as `message`: columns for people.
    pub fn table(&self, message: &impl Message, headers: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
        match self.json {
            true => println!("{}", json(message)?),
            false => print_columns(headers, rows),
        }
        Ok(())
    }

    /// Items as a JSON array with `--json`, columns for people.
    pub fn list<M: Message>(&self, items: &[M], headers: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
        match self.json {
            true => {
                let values: Vec<serde_json::Value> = items.iter().map(value).collect::<Result<_, _>>()?;
                println!("{}", serde_json::to_string_pretty(&values)?);
            }
            false => print_columns(headers, rows),
        }
        Ok(())
    }
}

/// The message in the API's JSON mapping (as the REST bridge answers).
pub fn json(message: &impl Message) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&value(message)?)?)
}

/// The message as a JSON value, through its descriptor.
pub fn value<M: Message>(message: &M) -> anyhow::Result<serde_json::Value> {
    let descriptor = capsule::proto::pool()
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| anyhow::anyhow!("{} is not in the contracts", M::full_name()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())?;
    Ok(serde_json::to_value(&dynamic)?)
}

fn print_columns(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A refused call as one line: the server's message, each field it names
/// and what to do about it, and what to run when the session is over.
pub fn status(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut line = status.message().to_owned();
    if let Some(request) = status.get_details_bad_request() {
        let fields: Vec<String> = request
            .field_violations
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect();
        if !fields.is_empty() {
            line = format!("{line} ({})", fields.join("; "));
        }
    }
    match status.code() {
        tonic::Code::Unauthenticated => anyhow::anyhow!("{line}: run `capsule login`"),
        tonic::Code::Unavailable => anyhow::anyhow!("{line}: is the API address right (--api, CAPSULE_API_URL)?"),
        _ => anyhow::anyhow!("{line}"),
    }
}
