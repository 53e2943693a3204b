struct S;

impl S {
    #[parla::task]
    async fn method(&self) {}
}

fn main() {}
