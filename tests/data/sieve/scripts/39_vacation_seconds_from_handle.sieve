require ["vacation", "vacation-seconds"];
vacation :seconds 3600 :from "carol@example.test" :handle "oof" "Back soon.";
