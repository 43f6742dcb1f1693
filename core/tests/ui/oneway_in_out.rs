#[courier::service]
pub trait Log {
    #[oneway]
    async fn write(&self, line: &mut String);
}

fn main() {}
