#[courier::service]
pub trait Log {
    #[oneway]
    #[idempotent]
    async fn write(&self, line: String);
}

fn main() {}
